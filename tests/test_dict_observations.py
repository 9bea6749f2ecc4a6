"""Dict observations: RLlib's FlattenObservations (then MeanStdFilter) connectors are inside
the exports, which take the observation flattened by RLlib's rule (policy/flatten.py) as input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rllib_mlflow.export import export_checkpoint
from rllib_mlflow.policy.flatten import flatten_observation
from rllib_mlflow.policy.serving import Policy
from rllib_mlflow.policy.spaces import space_to_json
from tests import envs

pytestmark = pytest.mark.slow
RECORD: list[tuple[dict, int]] = []


class RecordingDictObs(envs.DictObs):
    """Keeps (raw dict observation, action received) for every step RLlib takes."""

    def reset(self, **kwargs):
        obs, info = super().reset(**kwargs)
        self._last = {k: np.array(v) for k, v in obs.items()}
        return obs, info

    def step(self, action):
        RECORD.append((self._last, int(action)))
        obs, *rest = super().step(action)
        self._last = {k: np.array(v) for k, v in obs.items()}
        return (obs, *rest)


def _rllib_episodes(checkpoint, steps: int = 200) -> list[tuple[dict, int]]:
    from ray.tune.registry import register_env

    register_env("recording-dict-obs", lambda config: RecordingDictObs(config))
    algo = checkpoint.config.copy(copy_frozen=False).environment("recording-dict-obs").build_algo()
    try:
        algo.restore_from_path(checkpoint.path)
        for connector in algo.env_runner._env_to_module.connectors:
            if hasattr(connector, "_update_stats"):  # keep the filter at the checkpoint
                connector._update_stats = False
        RECORD.clear()
        algo.env_runner.sample(num_timesteps=steps, explore=False, random_actions=False)
        return list(RECORD)
    finally:
        algo.stop()


def test_dict_observations_export_with_flatten_and_filter(trained_checkpoint, tmp_path):
    checkpoint = trained_checkpoint("ppo_dict_obs")
    (exported,) = export_checkpoint(checkpoint.path, tmp_path / "export")
    policy_json = json.loads((exported.path / "policy.json").read_text())
    assert policy_json["observation_space"]["type"] == "Dict"
    assert [step["type"] for step in policy_json["preprocessing"]] == [
        "flatten",
        "mean_std_filter",
    ]
    assert policy_json["input"]["shape"] == [None, 5]  # 2 floats + one-hot of 3
    assert policy_json["parity"]["passed"]

    space = envs.DictObs().observation_space
    episodes = _rllib_episodes(checkpoint)
    assert len(episodes) >= 200
    flat = np.stack([flatten_observation(space_to_json(space), obs) for obs, _ in episodes])
    rllib_actions = np.array([action for _, action in episodes])
    for backend in ("onnxruntime", "tensorflow"):
        actions = Policy(str(exported.path), backend=backend).compute_actions(flat)
        np.testing.assert_array_equal(actions, rllib_actions, err_msg=backend)
