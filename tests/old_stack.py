"""Small, really trained checkpoints of RLlib's OLD API stack (TF2 and torch), for the tests.

RLlib's old-stack TF2 policies need TensorFlow started with TF_USE_LEGACY_KERAS=1, and the
pytest process has imported TensorFlow (with Keras 3) long before: so every checkpoint is
trained in one subprocess (`python -m tests.old_stack OUT NAME...`, one Ray, one TensorFlow),
which also records the ground truth: real episodes played by
`Algorithm.compute_single_action(obs, explore=False)`, saved as `<NAME>.truth.npz`
({policy_id}/obs and {policy_id}/actions). The `old_stack_checkpoints` fixture trains them all
once per session; import it into a test module to use it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SMALL_NET = [16, 16]
EPISODES = 3
MAX_STEPS = 120  # per episode: enough real states, few seconds
IMAGE_FILTERS = [[4, [4, 4], 2], [8, [3, 3], 2], [8, [4, 4], 1]]  # 16x16 -> 8 -> 4 -> 1


@dataclass(frozen=True)
class OldStackCheckpoint:
    """An old-stack checkpoint (`algo.save()`, or `policy.export_checkpoint` for "_policy"
    names) and what RLlib itself did on real episodes with it."""

    name: str
    path: str
    algo_name: str
    env_id: str
    framework: str
    policy_ids: tuple[str, ...]
    training_iteration: int
    truth_path: str  # npz: {policy_id}/obs[.key], {policy_id}/actions (RLlib's, explore=False)

    def episodes(self, policy_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Per recorded step: whether it began an episode, and the reward its action earned."""
        data = np.load(self.truth_path)
        return data[f"{policy_id}/starts"], data[f"{policy_id}/rewards"]

    def truth(self, policy_id: str) -> tuple[Any, np.ndarray]:
        """RLlib's observations (a dict of batches for Dict spaces) and actions."""
        data = np.load(self.truth_path)
        prefix = f"{policy_id}/obs."
        keys = [k for k in data.files if k.startswith(prefix)]
        obs = {k[len(prefix) :]: data[k] for k in keys} if keys else data[f"{policy_id}/obs"]
        return obs, data[f"{policy_id}/actions"]


def _ppo(framework: str, env_id: str, model: dict | None = None, **env_runners: Any):
    from ray.rllib.algorithms.ppo import PPOConfig

    return _common(PPOConfig(), framework, env_id, model, **env_runners).training(
        train_batch_size=200, minibatch_size=100, num_epochs=2
    )


def _impala_like(algo: str, framework: str):
    from ray.rllib.algorithms.appo import APPOConfig
    from ray.rllib.algorithms.impala import IMPALAConfig

    config_cls = APPOConfig if algo == "APPO" else IMPALAConfig
    return (
        _common(config_cls(), framework, "CartPole-v1", None, rollout_fragment_length=50)
        .training(train_batch_size=200)
        .resources(num_gpus=0)  # old-stack IMPALA asks for a GPU by default
        .reporting(min_sample_timesteps_per_iteration=200)
    )


def _common(config, framework: str, env_id: str, model: dict | None, **env_runners: Any):
    return (
        config.api_stack(
            enable_rl_module_and_learner=False, enable_env_runner_and_connector_v2=False
        )
        .environment(env_id)
        .framework(framework)
        .env_runners(num_env_runners=0, **env_runners)
        .training(model={"fcnet_hiddens": SMALL_NET, **(model or {})})
        .debugging(seed=0, log_level="ERROR")
        .reporting(min_time_s_per_iteration=0)
    )


def _multiagent(framework: str):
    from tests import envs

    return _ppo(framework, envs.MULTI_AGENT).multi_agent(
        policies={"p0", "p1"}, policy_mapping_fn=envs.policy_mapping_fn
    )


def _pendulum(framework: str):
    return _ppo(
        framework, "Pendulum-v1", {"free_log_std": True}, observation_filter="MeanStdFilter"
    )


def _lstm(framework: str, **options: bool):
    from tests import envs

    model = {"use_lstm": True, "lstm_cell_size": 8, "max_seq_len": 10, **options}
    return _ppo(framework, envs.NOISY_CHOICE, model)


def _image(framework: str):
    from tests import envs

    return _ppo(framework, envs.TINY_IMAGE, {"conv_filters": IMAGE_FILTERS})


def _replay(config, framework: str, env_id: str, **training: Any):
    """DQN and SAC, tiny: 100 steps an iteration, learning from step 50. The replay buffer by
    its name, as RLlib's own message tells old-stack users (the default is a new-stack one)."""
    return (
        _common(config, framework, env_id, None)
        .training(
            replay_buffer_config={"type": "MultiAgentReplayBuffer", "capacity": 1000},
            num_steps_sampled_before_learning_starts=50,
            train_batch_size=32,
            **training,
        )
        .reporting(min_sample_timesteps_per_iteration=100)
    )


def _dqn(framework: str, **training: Any):
    from ray.rllib.algorithms.dqn import DQNConfig

    return _replay(DQNConfig(), framework, "CartPole-v1", hiddens=[16], **training)


def _sac(framework: str, env_id: str):
    from ray.rllib.algorithms.sac import SACConfig

    small = {"fcnet_hiddens": SMALL_NET}
    # lr: the old stack's eager TF policy builds an Adam(lr) it never uses, and SAC's
    # default lr is None. 20 steps a fragment: a few updates, not one per step.
    return _replay(
        SACConfig(), framework, env_id, lr=3e-4, policy_model_config=small, q_model_config=small
    ).env_runners(rollout_fragment_length=20)


def _build_replay_algorithms_in_ray_2_60() -> None:
    """Ray 2.60's old-stack DQN and SAC do not build (`"EpisodeReplayBuffer" in
    config["replay_buffer_config"]["type"]` after validation made the type a class: TypeError).
    Hand `_create_local_replay_buffer_if_necessary` the class by its dotted name instead, in a
    copy (the config's own dict is validated again later, with the class)."""
    from ray.rllib.algorithms.algorithm import Algorithm

    create = Algorithm._create_local_replay_buffer_if_necessary

    def create_with_type_name(self, config):
        buffer = config.get("replay_buffer_config") or {}
        kind = buffer.get("type")
        if isinstance(kind, type):
            named = {**buffer, "type": f"{kind.__module__}.{kind.__name__}"}
            config = {**config, "replay_buffer_config": named}
        return create(self, config)

    Algorithm._create_local_replay_buffer_if_necessary = create_with_type_name


# DQN (dueling on TF2, plain on torch) and SAC (Box actions on torch; Discrete on TF2, whose
# Box actions need tensorflow-probability), trained a little with the patch above.
DQN_SAC: dict[str, tuple[str, str, str, Callable[[], Any], int]] = {
    "dqn_tf2_cartpole": ("DQN", "CartPole-v1", "tf2", lambda: _dqn("tf2"), 1),
    "dqn_torch_cartpole": ("DQN", "CartPole-v1", "torch", lambda: _dqn("torch", dueling=False), 1),
    "sac_torch_pendulum": ("SAC", "Pendulum-v1", "torch", lambda: _sac("torch", "Pendulum-v1"), 1),
    "sac_tf2_cartpole": ("SAC", "CartPole-v1", "tf2", lambda: _sac("tf2", "CartPole-v1"), 1),
}

# name -> (algo name, env id, framework, config builder, iterations; 0: built, not trained)
CONFIGS: dict[str, tuple[str, str, str, Callable[[], Any], int]] = {
    "ppo_tf2_cartpole": ("PPO", "CartPole-v1", "tf2", lambda: _ppo("tf2", "CartPole-v1"), 1),
    "ppo_tf2_pendulum": ("PPO", "Pendulum-v1", "tf2", lambda: _pendulum("tf2"), 1),
    "ppo_torch_cartpole": (
        "PPO",
        "CartPole-v1",
        "torch",
        lambda: _ppo("torch", "CartPole-v1", {"vf_share_layers": True}),
        1,
    ),
    "ppo_torch_pendulum": ("PPO", "Pendulum-v1", "torch", lambda: _pendulum("torch"), 1),
    "ppo_torch_widebox_clip": (
        "PPO",
        "rllib_mlflow_tests/WideBox-v0",
        "torch",
        lambda: _ppo("torch", "rllib_mlflow_tests/WideBox-v0").environment(
            normalize_actions=False, clip_actions=True
        ),
        1,
    ),
    "appo_tf2_cartpole": ("APPO", "CartPole-v1", "tf2", lambda: _impala_like("APPO", "tf2"), 1),
    "impala_torch_cartpole": (
        "IMPALA",
        "CartPole-v1",
        "torch",
        lambda: _impala_like("IMPALA", "torch"),
        1,
    ),
    "ppo_tf2_multiagent": (
        "PPO",
        "rllib_mlflow_tests_multiagent",
        "tf2",
        lambda: _multiagent("tf2"),
        1,
    ),
    "ppo_torch_image": (
        "PPO",
        "rllib_mlflow_tests/TinyImage-v0",
        "torch",
        lambda: _image("torch"),
        1,
    ),
    "ppo_tf2_image": ("PPO", "rllib_mlflow_tests/TinyImage-v0", "tf2", lambda: _image("tf2"), 1),
    "ppo_torch_dict_obs": (
        "PPO",
        "rllib_mlflow_tests/DictObs-v0",
        "torch",
        lambda: _ppo("torch", "rllib_mlflow_tests/DictObs-v0"),
        1,
    ),
    # RLlib's OneHotPreprocessor: Discrete (TF2) and MultiDiscrete (torch) observations.
    "ppo_tf2_discrete_obs": (
        "PPO",
        "rllib_mlflow_tests/GridCell-v0",
        "tf2",
        lambda: _ppo("tf2", "rllib_mlflow_tests/GridCell-v0"),
        1,
    ),
    "ppo_torch_multidiscrete_obs": (
        "PPO",
        "rllib_mlflow_tests/GridXY-v0",
        "torch",
        lambda: _ppo("torch", "rllib_mlflow_tests/GridXY-v0"),
        1,
    ),
    # LSTMs that read the previous reward (torch; with lstm_use_prev_action RLlib's torch
    # LSTMWrapper does not build in Ray 2.60: nn.LSTM gets a numpy int as its input size) and
    # the previous action and reward (TF2), on an env whose rewards vary.
    "ppo_torch_lstm_prev_reward": (
        "PPO",
        "rllib_mlflow_tests/NoisyChoice-v0",
        "torch",
        lambda: _lstm("torch", lstm_use_prev_reward=True),
        1,
    ),
    "ppo_tf2_lstm_prev": (
        "PPO",
        "rllib_mlflow_tests/NoisyChoice-v0",
        "tf2",
        lambda: _lstm("tf2", lstm_use_prev_action=True, lstm_use_prev_reward=True),
        1,
    ),
    # Built and saved without training: what the reader must refuse.
    "ppo_torch_lstm_prev_box_action": (
        "PPO",
        "Pendulum-v1",
        "torch",
        lambda: _ppo(
            "torch",
            "Pendulum-v1",
            {"use_lstm": True, "lstm_cell_size": 8, "lstm_use_prev_action": True},
        ),
        0,
    ),
    "ppo_torch_attention": (
        "PPO",
        "CartPole-v1",
        "torch",
        lambda: _ppo("torch", "CartPole-v1", {"use_attention": True, "attention_dim": 8}),
        0,
    ),
}
CONFIGS |= DQN_SAC
# Also written: "ppo_torch_cartpole_policy", the Policy checkpoint of ppo_torch_cartpole.
POLICY_CHECKPOINT_OF = {"ppo_torch_cartpole_policy": "ppo_torch_cartpole"}


def _play(algo, env_id: str, multi_agent: bool) -> dict[str, np.ndarray]:
    """Real episodes acted by RLlib itself (explore=False): {policy_id}/obs, /actions, and
    /starts (True on an episode's first step) and /rewards (what each action earned). An LSTM
    policy's state is carried, and its previous action and reward are passed as RLlib's
    sampler pads and passes them (action 0 and reward 0 before the first step)."""
    from tests import envs

    env = envs.make_env(env_id)
    mapping = algo.config.policy_mapping_fn
    seen: dict[str, dict[str, list]] = {}
    for episode in range(EPISODES):
        obs, _ = env.reset(seed=episode)
        memory: dict[str, dict[str, Any]] = {}  # per agent: state, prev action and reward
        for _ in range(MAX_STEPS):
            per_agent = obs if multi_agent else {"agent": obs}
            actions = {}
            for agent, agent_obs in per_agent.items():
                pid = mapping(agent, None) if multi_agent else "default_policy"
                columns = seen.setdefault(pid, {"obs": [], "actions": [], "starts": []})
                columns["starts"].append(agent not in memory)
                actions[agent] = _act(algo, pid, agent_obs, memory.setdefault(agent, {}))
                columns["obs"].append(agent_obs)
                columns["actions"].append(np.asarray(actions[agent]))
            obs, rewards, terminated, truncated, _ = env.step(
                actions if multi_agent else actions["agent"]
            )
            for agent in actions:
                reward = rewards.get(agent, 0.0) if multi_agent else rewards
                memory[agent]["prev_reward"] = float(reward)
                pid = mapping(agent, None) if multi_agent else "default_policy"
                seen[pid].setdefault("rewards", []).append(float(reward))
            done = terminated.get("__all__") if multi_agent else terminated or truncated
            if done or (multi_agent and not obs):
                break
    out: dict[str, np.ndarray] = {}
    for pid, columns in seen.items():
        obs_list = columns.pop("obs")
        out.update({f"{pid}/{kind}": np.stack(values) for kind, values in columns.items()})
        if isinstance(obs_list[0], dict):  # one column per key: `truth` gives a dict back
            out.update({f"{pid}/obs.{k}": np.stack([o[k] for o in obs_list]) for k in obs_list[0]})
        else:
            out[f"{pid}/obs"] = np.stack(obs_list)
    return out


def _act(algo, pid: str, obs, memory: dict[str, Any]):
    """One action by `Algorithm.compute_single_action(explore=False)`; for an LSTM policy
    with its state and (if it reads them) previous action and reward from `memory`."""
    policy = algo.get_policy(pid)
    # Both passed: with their defaults, compute_single_action skips clip_actions
    # (`elif clip_action is None`), which RLlib's EnvRunner applies.
    kwargs = {
        "policy_id": pid,
        "explore": False,
        "unsquash_action": algo.config.normalize_actions,
        "clip_action": algo.config.clip_actions,
    }
    initial = policy.get_initial_state()
    if not initial:
        return algo.compute_single_action(obs, **kwargs)
    model = policy.config["model"]
    if model.get("lstm_use_prev_action"):
        kwargs["prev_action"] = memory.get("prev_action", 0)
    if model.get("lstm_use_prev_reward"):
        kwargs["prev_reward"] = memory.get("prev_reward", 0.0)
    action, memory["state"], _ = algo.compute_single_action(
        obs, state=memory.get("state", initial), **kwargs
    )
    memory["prev_action"] = action
    return action


def train(name: str, out: Path) -> list[dict[str, Any]]:
    """Train configuration `name`, save it under out/name and record RLlib's episodes."""
    algo_name, env_id, framework, build, iterations = CONFIGS[name]
    config = build()
    algo = config.build_algo()
    path, result = out / name, {}
    try:
        for _ in range(iterations):
            result = algo.train()
        algo.save(str(path))
        for policy_name, source in POLICY_CHECKPOINT_OF.items():
            if source == name:
                algo.get_policy().export_checkpoint(str(out / policy_name))
    finally:
        algo.stop()
    truth = out / f"{name}.truth.npz"
    if iterations:
        np.savez(truth, **_play_checkpoint(str(path), env_id, config.is_multi_agent))
    record = {
        "name": name,
        "path": str(path),
        "algo_name": algo_name,
        "env_id": env_id,
        "framework": framework,
        "policy_ids": sorted(config.policies) if config.is_multi_agent else ["default_policy"],
        "training_iteration": int(result.get("training_iteration", 0)),
        "truth_path": str(truth),
    }
    policies = [n for n, source in POLICY_CHECKPOINT_OF.items() if source == name]
    return [record] + [{**record, "name": n, "path": str(out / n)} for n in policies]


def _play_checkpoint(path: str, env_id: str, multi_agent: bool) -> dict[str, np.ndarray]:
    """RLlib's own actions from the saved checkpoint. Not from the training Algorithm: IMPALA's
    and APPO's learner thread may still update its weights after `save()`."""
    from ray.rllib.algorithms.algorithm import Algorithm

    algo = Algorithm.from_checkpoint(path)
    try:
        return _play(algo, env_id, multi_agent)
    finally:
        algo.stop()


def main(out: str, names: list[str]) -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
    import ray

    from tests import envs  # noqa: F401  (registers the test environments)

    _build_replay_algorithms_in_ray_2_60()

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        records = [r for name in names for r in train(name, Path(out))]
    finally:
        ray.shutdown()
    Path(out, "checkpoints.json").write_text(json.dumps(records))


def train_all(out: Path, names: list[str] | None = None) -> dict[str, OldStackCheckpoint]:
    """Train `names` (default: all CONFIGS) in one subprocess; {name: checkpoint}."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.old_stack", str(out), *(names or CONFIGS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(Path(__file__).resolve().parents[1]),
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    records = json.loads(Path(out, "checkpoints.json").read_text())
    return {
        r["name"]: OldStackCheckpoint(**{**r, "policy_ids": tuple(r["policy_ids"])})
        for r in records
    }


@pytest.fixture(scope="session")
def old_stack_checkpoints(tmp_path_factory: pytest.TempPathFactory):
    """{name: OldStackCheckpoint} for every name in CONFIGS but DQN_SAC's (and
    POLICY_CHECKPOINT_OF): test files run on different workers, so each trains only what it
    reads."""
    names = [name for name in CONFIGS if name not in DQN_SAC]
    return train_all(tmp_path_factory.mktemp("old_stack_checkpoints"), names)


@pytest.fixture(scope="session")
def dqn_sac_checkpoints(tmp_path_factory: pytest.TempPathFactory):
    """{name: OldStackCheckpoint} for the names of DQN_SAC."""
    return train_all(tmp_path_factory.mktemp("dqn_sac_checkpoints"), list(DQN_SAC))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
