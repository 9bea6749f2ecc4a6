"""Small gymnasium environments for the tests.

Each one exercises a different shape of policy input or output (multi-discrete actions,
image observations, asymmetric Box bounds, several agents) while staying cheap enough that
RLlib trains on it for an iteration in a few seconds. Importing this module registers the
environments; `register_test_envs()` is idempotent and may be called again.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from ray.rllib.env.multi_agent_env import MultiAgentEnv

MULTI_DISCRETE_CORRIDOR = "rllib_mlflow_tests/MultiDiscreteCorridor-v0"
TINY_IMAGE = "rllib_mlflow_tests/TinyImage-v0"
WIDE_BOX = "rllib_mlflow_tests/WideBox-v0"
DICT_OBS = "rllib_mlflow_tests/DictObs-v0"
NOISY_CHOICE = "rllib_mlflow_tests/NoisyChoice-v0"
ACTION_MASK = "rllib_mlflow_tests/ActionMask-v0"
FLICKER = "rllib_mlflow_tests/Flicker-v0"
KEYWORD_DICT = "rllib_mlflow_tests/KeywordDict-v0"
NESTED_DICT = "rllib_mlflow_tests/NestedDict-v0"
PIXELS_255 = "rllib_mlflow_tests/Pixels255-v0"
TUPLE_ACTIONS = "rllib_mlflow_tests/TupleActions-v0"
MULTI_AGENT = "rllib_mlflow_tests_multiagent"
GRID_CELL = "rllib_mlflow_tests/GridCell-v0"  # Discrete observations
GRID_XY = "rllib_mlflow_tests/GridXY-v0"  # MultiDiscrete observations
PARTLY_BOUNDED = "rllib_mlflow_tests/PartlyBounded-v0"  # Box actions bounded on one side

WIDE_BOX_LOW = np.array([-2.0, 0.0, -10.0], dtype=np.float32)
WIDE_BOX_HIGH = np.array([1.0, 5.0, 10.0], dtype=np.float32)


class MultiDiscreteCorridor(gym.Env):
    """Walk along a corridor with a [direction, speed] action.

    Observation: Box(4,) = (position, goal, step fraction, bias 1.0).
    Action: MultiDiscrete([3, 2]): direction (left, stay, right) and speed (1 or 2).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: dict | None = None, length: int = 10, max_steps: int = 30):
        config = dict(config or {})
        self.length = int(config.get("length", length))
        self.max_steps = int(config.get("max_steps", max_steps))
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.MultiDiscrete([3, 2])
        self._pos = 0
        self._goal = 0
        self._t = 0

    def _obs(self) -> np.ndarray:
        return np.array(
            [
                self._pos / self.length,
                self._goal / self.length,
                self._t / self.max_steps,
                1.0,
            ],
            dtype=np.float32,
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._pos = int(self.np_random.integers(-self.length, self.length + 1))
        self._goal = int(self.np_random.integers(-self.length, self.length + 1))
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        direction, speed = int(action[0]) - 1, int(action[1]) + 1
        before = abs(self._goal - self._pos)
        self._pos = int(np.clip(self._pos + direction * speed, -self.length, self.length))
        self._t += 1
        after = abs(self._goal - self._pos)
        terminated = after == 0
        reward = float(before - after) + (1.0 if terminated else 0.0)
        truncated = self._t >= self.max_steps
        return self._obs(), reward, terminated, truncated, {}


class TinyImage(gym.Env):
    """Pick the colour channel that is brightest in a small random image.

    Observation: Box(0, 1, (16, 16, 3), float32). Action: Discrete(3). Reward 1 when the
    chosen channel has the highest mean, else 0. Episodes last `max_steps` (20) steps.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: dict | None = None, max_steps: int = 20):
        config = dict(config or {})
        self.max_steps = int(config.get("max_steps", max_steps))
        self.observation_space = spaces.Box(0.0, 1.0, shape=(16, 16, 3), dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        self._img = np.zeros((16, 16, 3), dtype=np.float32)
        self._t = 0

    def _new_image(self) -> np.ndarray:
        img = self.np_random.uniform(0.0, 0.5, size=(16, 16, 3)).astype(np.float32)
        bright = int(self.np_random.integers(3))
        img[..., bright] += 0.4
        return np.clip(img, 0.0, 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._img = self._new_image()
        return self._img, {}

    def step(self, action):
        reward = float(int(action) == int(np.argmax(self._img.mean(axis=(0, 1)))))
        self._t += 1
        self._img = self._new_image()
        return self._img, reward, False, self._t >= self.max_steps, {}


class WideBox(gym.Env):
    """Continuous control with asymmetric, per-dimension action bounds.

    Observation: Box(5,) (a target in action units, scaled to about [-1, 1], plus noise).
    Action: Box(low=[-2, 0, -10], high=[1, 5, 10]). Reward is minus the normalised distance
    between the action and the target, so the bounds matter for a correct export.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: dict | None = None, max_steps: int = 25):
        config = dict(config or {})
        self.max_steps = int(config.get("max_steps", max_steps))
        self.observation_space = spaces.Box(-5.0, 5.0, shape=(5,), dtype=np.float32)
        self.action_space = spaces.Box(WIDE_BOX_LOW, WIDE_BOX_HIGH, dtype=np.float32)
        self._target = np.zeros(3, dtype=np.float32)
        self._t = 0

    def _obs(self) -> np.ndarray:
        span = WIDE_BOX_HIGH - WIDE_BOX_LOW
        scaled = 2.0 * (self._target - WIDE_BOX_LOW) / span - 1.0
        noise = self.np_random.normal(0.0, 1.0, size=2)
        return np.concatenate([scaled, noise]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._target = self.np_random.uniform(WIDE_BOX_LOW, WIDE_BOX_HIGH).astype(np.float32)
        return self._obs(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), WIDE_BOX_LOW, WIDE_BOX_HIGH)
        span = WIDE_BOX_HIGH - WIDE_BOX_LOW
        reward = -float(np.abs((action - self._target) / span).sum())
        self._t += 1
        self._target = self.np_random.uniform(WIDE_BOX_LOW, WIDE_BOX_HIGH).astype(np.float32)
        return self._obs(), reward, False, self._t >= self.max_steps, {}


class TwoAgentBalance(MultiAgentEnv):
    """Two agents ("a0", "a1"), each balancing its own CartPole; the episode ends when both are
    done. Observation Box(4,), action Discrete(2) per agent."""

    AGENTS = ("a0", "a1")

    def __init__(self, config: dict | None = None):
        super().__init__()
        self._envs = {aid: gym.make("CartPole-v1") for aid in self.AGENTS}
        self.possible_agents = list(self.AGENTS)
        self.agents = list(self.AGENTS)
        obs_space = self._envs["a0"].observation_space
        act_space = self._envs["a0"].action_space
        self.observation_spaces = {aid: obs_space for aid in self.AGENTS}
        self.action_spaces = {aid: act_space for aid in self.AGENTS}
        self._done: set[str] = set()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._done = set()
        self.agents = list(self.AGENTS)
        obs, infos = {}, {}
        for i, (aid, env) in enumerate(self._envs.items()):
            obs[aid], infos[aid] = env.reset(seed=None if seed is None else seed + i)
        return obs, infos

    def step(self, action_dict):
        obs, rewards, terminateds, truncateds, infos = {}, {}, {}, {}, {}
        for aid, action in action_dict.items():
            o, r, term, trunc, info = self._envs[aid].step(action)
            obs[aid], rewards[aid], infos[aid] = o, r, info
            terminateds[aid], truncateds[aid] = term, trunc
            if term or trunc:
                self._done.add(aid)
        all_done = len(self._done) == len(self.AGENTS)
        terminateds["__all__"] = all_done
        truncateds["__all__"] = False
        self.agents = [aid for aid in self.AGENTS if aid not in self._done]
        return obs, rewards, terminateds, truncateds, infos


def policy_mapping_fn(agent_id: str, episode: Any = None, **kwargs: Any) -> str:
    """Map agent "a0" to module "p0" and "a1" to "p1"."""
    return "p" + str(agent_id)[-1]


class DictObs(gym.Env):
    """Dict observations (a Box and a Discrete part) that RLlib must flatten.

    Observation: Dict(position=Box(-1, 1, (2,)), mode=Discrete(3)). Action: Discrete(2).
    Reward 1 when the action matches the sign of the position's sum, flipped in mode 2.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: dict | None = None, max_steps: int = 20):
        self.max_steps = max_steps
        self.observation_space = spaces.Dict(
            {
                "position": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
                "mode": spaces.Discrete(3),
            }
        )
        self.action_space = spaces.Discrete(2)
        self._t = 0

    def _obs(self) -> dict[str, Any]:
        self._state = {
            "position": self.np_random.uniform(-1, 1, size=2).astype(np.float32),
            "mode": int(self.np_random.integers(3)),
        }
        return self._state

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        right = int(self._state["position"].sum() > 0) ^ int(self._state["mode"] == 2)
        self._t += 1
        return self._obs(), float(int(action) == right), False, self._t >= self.max_steps, {}


class NoisyChoice(gym.Env):
    """Rewards that differ from step to step, for policies that read past rewards.

    Observation: Box(-1, 1, (3,)). Action: Discrete(3). Reward: 1 for the action that
    matches the largest observation entry, minus the entry the action points at, so that
    rewards vary. Episodes last 15 steps.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: dict | None = None, max_steps: int = 15):
        self.max_steps = max_steps
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        self._t = 0

    def _obs(self) -> np.ndarray:
        self._state = self.np_random.uniform(-1, 1, size=3).astype(np.float32)
        return self._state

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        state = self._state
        reward = float(int(action) == int(np.argmax(state))) - float(state[int(action)])
        self._t += 1
        return self._obs(), reward, False, self._t >= self.max_steps, {}


class Flicker(gym.Env):
    """Grey images whose brightness flickers: a policy must compare frames (frame stacking).

    Observation: Box(0, 1, (12, 12, 1)). Action: Discrete(2). Reward 1 when the action says
    whether this frame is brighter than the previous one. Episodes last 15 steps.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: dict | None = None, max_steps: int = 15):
        self.max_steps = max_steps
        self.observation_space = spaces.Box(0.0, 1.0, shape=(12, 12, 1), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._t = 0

    def _obs(self) -> np.ndarray:
        level = self.np_random.uniform(0.1, 0.9)
        noise = self.np_random.uniform(-0.1, 0.1, size=(12, 12, 1))
        return np.clip(level + noise, 0.0, 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._frame = self._obs()
        return self._frame, {}

    def step(self, action):
        previous, self._frame = self._frame, self._obs()
        reward = float(int(action) == int(self._frame.mean() > previous.mean()))
        self._t += 1
        return self._frame, reward, False, self._t >= self.max_steps, {}


def keyword_dict_space() -> spaces.Dict:
    """A flat Dict built with keywords, the usual style: gymnasium keeps pos, flag, vel in
    that order, RLlib flattens flag, pos, vel."""
    return spaces.Dict(
        pos=spaces.Box(-1.0, 1.0, (3,), np.float32),
        flag=spaces.Discrete(2),
        vel=spaces.Box(-1.0, 1.0, (2,), np.float32),
    )


def nested_dict_space() -> spaces.Dict:
    """Dicts in a Tuple in a Dict, built from OrderedDicts whose keys are not sorted."""
    inner = spaces.Dict(
        OrderedDict(
            [("speed", spaces.Box(-1.0, 1.0, (2,), np.float32)), ("gear", spaces.Discrete(3))]
        )
    )
    return spaces.Dict(
        OrderedDict(
            [
                ("target", spaces.Box(-1.0, 1.0, (2,), np.float32)),
                ("parts", spaces.Tuple((spaces.Discrete(2), inner))),
                ("bias", spaces.Box(-1.0, 1.0, (1,), np.float32)),
            ]
        )
    )


class StructuredObs(gym.Env):
    """Random structured observations (`space`), Discrete(3) actions, 10-step episodes.

    Reward 1 when the action is the index of the largest of the first three flattened values
    in the space's own order, so that the order of the parts matters to what is learnt."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: dict | None = None, nested: bool = False):
        self.observation_space = nested_dict_space() if nested else keyword_dict_space()
        self.action_space = spaces.Discrete(3)
        self._t = 0

    def _obs(self):
        self._state = self.observation_space.sample()
        return self._state

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        first = gym.spaces.flatten(self.observation_space, self._state)[:3]
        reward = float(int(action) == int(np.argmax(first)))
        self._t += 1
        return self._obs(), reward, False, self._t >= 10, {}


class Pixels255(TinyImage):
    """TinyImage with float pixels in 0..255, as Atari-style frames come before scaling:
    large activations, where float32 rounding exceeds 1e-5 in absolute terms."""

    def __init__(self, config: dict | None = None, max_steps: int = 20):
        super().__init__(config, max_steps)
        self.observation_space = spaces.Box(0.0, 255.0, shape=(16, 16, 3), dtype=np.float32)

    def _new_image(self) -> np.ndarray:
        return (super()._new_image() * 255.0).astype(np.float32)


class TupleActions(gym.Env):
    """Box(3,) observations and Tuple(Discrete(3), Box(2,)) actions; 10-step episodes."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: dict | None = None):
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Tuple(
            (spaces.Discrete(3), spaces.Box(-1.0, 1.0, (2,), np.float32))
        )
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self._t += 1
        return self.observation_space.sample(), 0.0, False, self._t >= 10, {}


# Ray's own example environment for action masking (Dict observations with "action_mask").
ACTION_MASK_CONFIG = {
    "action_space": spaces.Discrete(32),  # a mask rarely allows nothing (2**-32)
    "observation_space": spaces.Box(-1.0, 1.0, (3,), np.float32),
    "max_episode_len": 20,
}


class GridWalk(gym.Env):
    """Discrete or MultiDiscrete observations (RLlib's old stack one-hots them).

    A walker on a 5x5 grid: observation its cell as Discrete(25) (`xy=False`) or its (x, y)
    as MultiDiscrete([5, 5]); action Discrete(4), a step up, down, left or right (walls
    stop it); reward 1 in the far corner, which ends the episode. Episodes start at a random
    cell and last at most 15 steps.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    SIZE = 5
    MOVES = ((0, 1), (0, -1), (-1, 0), (1, 0))

    def __init__(self, config: dict | None = None, xy: bool = False, max_steps: int = 15):
        self.xy, self.max_steps = xy, max_steps
        n = self.SIZE
        self.observation_space = spaces.MultiDiscrete([n, n]) if xy else spaces.Discrete(n * n)
        self.action_space = spaces.Discrete(4)
        self._pos, self._t = np.zeros(2, np.int64), 0

    def _obs(self):
        x, y = (int(v) for v in self._pos)
        return np.array([x, y], np.int64) if self.xy else x * self.SIZE + y

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._pos, self._t = self.np_random.integers(0, self.SIZE - 1, size=2), 0
        return self._obs(), {}

    def step(self, action):
        self._pos = np.clip(self._pos + self.MOVES[int(action)], 0, self.SIZE - 1)
        self._t += 1
        arrived = bool(np.all(self._pos == self.SIZE - 1))
        return self._obs(), float(arrived), arrived, self._t >= self.max_steps, {}


def _action_mask_env(config: dict | None = None):
    from ray.rllib.examples.envs.classes.action_mask_env import ActionMaskEnv

    return ActionMaskEnv({**ACTION_MASK_CONFIG, **(config or {})})


class PartlyBounded(gym.Env):
    """Box actions bounded on the first dimension only: [-0.2, 0.2] x (-inf, inf), where
    RLlib's normalize_actions leaves every action alone (issue 35), clip_actions or not.

    Observation: Box(-5, 5, (3,)), wide, so an untrained policy's means pass 0.2. Reward:
    minus the distance of the action from (obs[0] / 5, obs[1]). 20-step episodes."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: dict | None = None):
        self.observation_space = spaces.Box(-5.0, 5.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Box(
            np.array([-0.2, -np.inf], np.float32), np.array([0.2, np.inf], np.float32)
        )
        self._obs = np.zeros(3, np.float32)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._obs = self.np_random.uniform(-5.0, 5.0, 3).astype(np.float32)
        return self._obs, {}

    def step(self, action):
        target = np.array([self._obs[0] / 5.0, self._obs[1]], np.float32)
        reward = -float(np.abs(np.asarray(action, np.float32) - target).sum())
        self._t += 1
        self._obs = self.np_random.uniform(-5.0, 5.0, 3).astype(np.float32)
        return self._obs, reward, False, self._t >= 20, {}


def make_env(env_id: str, config: dict | None = None) -> gym.Env | MultiAgentEnv:
    """Create an environment by the id a test checkpoint was trained on (gymnasium ids, and
    the Tune-registered multi-agent name, which gymnasium does not know)."""
    if env_id == MULTI_AGENT:
        return TwoAgentBalance(config)
    return gym.make(env_id)


# (raw observation, action the env received, reward it returned) for one env step
Step = tuple[Any, np.ndarray, float]


class RecordingEnv(gym.Wrapper):
    """Keeps what RLlib's EnvRunner sends the env it wraps: per episode (one list per reset),
    every step's raw observation, action and reward. A class attribute, not the instance's:
    RLlib builds the env itself (num_env_runners=0: in the test's process), so the test
    reads the recording from here."""

    episodes: ClassVar[list[list[Step]]] = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        RecordingEnv.episodes.append([])
        self._last = copy.deepcopy(obs)  # RLlib's connectors may change it in place
        return obs, info

    def step(self, action):
        obs, reward, *rest = self.env.step(action)
        step = (self._last, np.array(action, copy=True), float(np.asarray(reward)))
        RecordingEnv.episodes[-1].append(step)
        self._last = copy.deepcopy(obs)
        return (obs, reward, *rest)


def rllib_episodes(
    config: Any, checkpoint: str, make: Callable[[], gym.Env], num_timesteps: int
) -> list[list[Step]]:
    """The episodes RLlib's EnvRunner plays with explore=False, restored from `checkpoint`
    (new API stack; `config` is the checkpoint's) around `make()`'s env: what users' code
    must match. Observation filters are frozen, as the exports freeze them at the checkpoint."""
    from ray.tune.registry import register_env

    name = f"recording:{config.env}"
    register_env(name, lambda _: RecordingEnv(make()))
    algo = config.copy(copy_frozen=False).environment(name).build_algo()
    try:
        algo.restore_from_path(checkpoint)
        for connector in algo.env_runner._env_to_module.connectors:
            if hasattr(connector, "_update_stats"):  # MeanStdFilter
                connector._update_stats = False
        RecordingEnv.episodes.clear()
        algo.env_runner.sample(num_timesteps=num_timesteps, explore=False, random_actions=False)
        return [episode for episode in RecordingEnv.episodes if episode]
    finally:
        algo.stop()


def register_test_envs() -> None:
    """Register the test environments with gymnasium and Ray Tune (idempotent)."""
    from ray.tune.registry import register_env

    for env_id, cls in (
        (MULTI_DISCRETE_CORRIDOR, MultiDiscreteCorridor),
        (TINY_IMAGE, TinyImage),
        (WIDE_BOX, WideBox),
        (DICT_OBS, DictObs),
        (NOISY_CHOICE, NoisyChoice),
        (ACTION_MASK, _action_mask_env),
        (FLICKER, Flicker),
        (KEYWORD_DICT, StructuredObs),
        (NESTED_DICT, functools.partial(StructuredObs, nested=True)),
        (PIXELS_255, Pixels255),
        (TUPLE_ACTIONS, TupleActions),
        (GRID_CELL, GridWalk),
        (GRID_XY, functools.partial(GridWalk, xy=True)),
        (PARTLY_BOUNDED, PartlyBounded),
    ):
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=cls)
    register_env(MULTI_AGENT, lambda config: TwoAgentBalance(config))


register_test_envs()
