"""The action rule we export for Box actions does what RLlib's module-to-env pipeline does.

For every combination of normalize_actions and clip_actions, on fully bounded, one-sided
and unbounded Box action spaces, the same action_dist_inputs go through RLlib's own
pipeline (built by AlgorithmConfig, driven as an EnvRunner drives it) and through the rule
`rllib/connectors.py` writes into policy.json, applied as `Policy` (numpy) and the ONNX
graph (torch) apply it. No training: the rule is a function of the space and the settings.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rllib_mlflow.errors import UnsupportedModuleError
from rllib_mlflow.policy.actions import deterministic_actions
from rllib_mlflow.rllib.connectors import _rule_for_space

INF = np.inf
BOUNDS = {
    "bounded": ([-2.0, 0.0], [1.0, 5.0]),
    "one dimension bounded": ([-0.2, -INF], [0.2, INF]),
    "bounded below only": ([0.0, 0.0], [INF, INF]),
    "unbounded": ([-INF, -INF], [INF, INF]),
}
OBSERVATIONS = gym.spaces.Box(-5.0, 5.0, (3,), np.float32)


def rllib_actions(action_space, normalize: bool, clip: bool, dist_inputs: np.ndarray):
    """What RLlib's default module-to-env pipeline sends the env for these inputs."""
    import torch
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.core.columns import Columns
    from ray.rllib.env import INPUT_ENV_SINGLE_SPACES, INPUT_ENV_SPACES
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    config = PPOConfig().environment(normalize_actions=normalize, clip_actions=clip)
    spaces = {
        key: (OBSERVATIONS, action_space)
        for key in (INPUT_ENV_SPACES, INPUT_ENV_SINGLE_SPACES, DEFAULT_MODULE_ID)
    }
    module = config.get_rl_module_spec(spaces=spaces).build()
    episodes = [
        SingleAgentEpisode(observation_space=OBSERVATIONS, action_space=action_space)
        for _ in dist_inputs
    ]
    for episode in episodes:
        episode.add_env_reset(observation=OBSERVATIONS.sample())
    shared_data: dict = {}  # env-to-module records the batch structure module-to-env undoes
    config.build_env_to_module_connector(spaces=spaces)(
        rl_module=module, episodes=episodes, explore=False, shared_data=shared_data
    )
    out = config.build_module_to_env_connector(spaces=spaces)(
        rl_module=module,
        batch={Columns.ACTION_DIST_INPUTS: torch.from_numpy(dist_inputs)},
        episodes=episodes,
        explore=False,
        shared_data=shared_data,
    )
    return np.stack(out.get(Columns.ACTIONS_FOR_ENV, out[Columns.ACTIONS]))


@pytest.mark.parametrize("clip", [False, True], ids=["no clip", "clip"])
@pytest.mark.parametrize("normalize", [False, True], ids=["no normalize", "normalize"])
@pytest.mark.parametrize("bounds", list(BOUNDS))
def test_box_action_rule_is_rllibs(bounds, normalize, clip):
    import torch

    from rllib_mlflow.export.onnx import _normalize_and_clip

    low, high = (np.asarray(b, np.float32) for b in BOUNDS[bounds])
    action_space = gym.spaces.Box(low, high, dtype=np.float32)
    rng = np.random.default_rng(0)
    # Means well past every finite bound and inside them; the log stds do not matter.
    dist_inputs = rng.uniform(-3.0, 3.0, (64, 4)).astype(np.float32)
    want = rllib_actions(action_space, normalize, clip, dist_inputs)
    settings = {"normalize_actions": normalize, "clip_actions": clip}
    rule = _rule_for_space("diag_gaussian", action_space, [("NormalizeAndClipActions", settings)])
    policy = deterministic_actions(dist_inputs, rule.to_json())
    np.testing.assert_allclose(policy, want, rtol=1e-6, err_msg="Policy's rule")
    graph = _normalize_and_clip(torch.from_numpy(dist_inputs[:, :2]), rule).numpy()
    np.testing.assert_allclose(graph, want, rtol=1e-6, err_msg="the ONNX graph's rule")


def test_normalize_actions_on_an_integer_box_is_refused_with_what_to_do():
    action_space = gym.spaces.Box(0, 10, (2,), np.int64)
    settings = {"normalize_actions": True, "clip_actions": False}
    with pytest.raises(UnsupportedModuleError, match="normalize_actions=False"):
        _rule_for_space("diag_gaussian", action_space, [("NormalizeAndClipActions", settings)])
