"""An old-API-stack TF2 policy on Discrete observations (Taxi-v3: 500 states, one-hot by
RLlib's preprocessor), registered, then loaded by `load_policy` on both backends and served
by the real `mlflow models serve`, fed the env's raw observations (plain integers): each must
send the env the actions RLlib's own EnvRunner (the old stack's RolloutWorker, explore=False)
sent it on a real seeded episode, recorded by tests.envs.RecordingEnv.

RLlib's old-stack TF2 policies need TF_USE_LEGACY_KERAS=1 before TensorFlow starts, and this
process started it with Keras 3: training and recording run in a subprocess
(`python -m tests.test_old_stack_discrete_obs OUT`), the registration in another that sets
nothing (the library arranges TF_USE_LEGACY_KERAS itself).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.mlflow_server import post_json, start_model_server

pytestmark = pytest.mark.slow

NAME = "old-stack-taxi"
RECORDING = "recording-taxi"
FORMATS = ["saved_model", "onnx"]
ROOT = str(Path(__file__).resolve().parents[1])

_REGISTER = """
import sys
from rllib_mlflow import log_checkpoint
log_checkpoint(sys.argv[1], sys.argv[2], formats=sys.argv[4].split(","), tracking_uri=sys.argv[3])
"""


def _without_legacy_keras() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}


def _run(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=_without_legacy_keras(),
        cwd=ROOT,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> dict:
    """Trained, recorded and registered once: the tracking URI, RLlib's observations and
    the actions its EnvRunner sent the env."""
    out = tmp_path_factory.mktemp("old_stack_taxi")
    _run("-m", "tests.test_old_stack_discrete_obs", str(out))
    uri = f"sqlite:///{out / 'mlflow.db'}"
    _run("-c", _REGISTER, str(out / "checkpoint"), NAME, uri, ",".join(FORMATS))
    truth = np.load(out / "truth.npz")
    return {"uri": uri, "obs": truth["obs"], "actions": truth["actions"], "out": out}


def test_the_recorded_episode_is_taxis_raw_states(registered):
    obs, actions = registered["obs"], registered["actions"]
    assert obs.ndim == 1 and np.issubdtype(obs.dtype, np.integer) and len(obs) >= 100
    assert len(np.unique(obs)) > 5 and len(np.unique(actions)) > 1


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorflow"])
def test_load_policy_takes_taxis_states_and_acts_like_rllib(registered, backend):
    import rllib_mlflow._tensorflow_first  # noqa: F401  (eager again: conftest imported RLlib)
    from rllib_mlflow import load_policy

    obs, want = registered["obs"], registered["actions"]
    policy = load_policy(f"models:/{NAME}/1", backend=backend, tracking_uri=registered["uri"])
    assert policy.backend == backend and policy.metadata["observation_space"]["n"] == 500
    np.testing.assert_array_equal(policy.compute_actions(obs), want)
    np.testing.assert_array_equal(policy.compute_actions(obs[:, None]), want)
    assert policy.compute_actions(int(obs[0])).tolist() == [want[0]]


def test_served_model_takes_taxis_states_and_acts_like_rllib(registered):
    obs, want = registered["obs"], registered["actions"]
    log = registered["out"] / "serve.log"
    server = start_model_server(f"models:/{NAME}/1", registered["uri"], log)
    try:
        url = f"{server.uri}/invocations"
        for inputs in (obs.tolist(), obs[:, None].tolist()):
            status, body = post_json(url, {"inputs": inputs})
            assert status == 200, body
            np.testing.assert_array_equal(body["predictions"], want)
        status, body = post_json(url, {"inputs": [int(obs[0])]})  # one step, as an env loop
        assert status == 200 and body["predictions"] == [want[0]], body
    finally:
        server.stop()


# -- the subprocess: train, save, replay with RLlib's RolloutWorker ---------------------------


def main(out: str) -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
    import gymnasium as gym
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    from tests.envs import RecordingEnv

    # Short episodes: many start states (an untrained policy may stay in one place).
    taxi = functools.partial(gym.make, "Taxi-v3", max_episode_steps=10)
    register_env(RECORDING, lambda _: RecordingEnv(taxi()))
    config = (
        PPOConfig()
        .api_stack(enable_rl_module_and_learner=False, enable_env_runner_and_connector_v2=False)
        .environment(RECORDING)
        .framework("tf2")
        .env_runners(num_env_runners=0)
        .training(
            model={"fcnet_hiddens": [16, 16]},
            train_batch_size=200,
            minibatch_size=100,
            num_epochs=1,
        )
        .debugging(seed=0, log_level="ERROR")
        .reporting(min_time_s_per_iteration=0)
    )
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        algo = config.build_algo()
        try:
            algo.train()
            checkpoint = algo.save(str(Path(out, "checkpoint"))).checkpoint.path
        finally:
            algo.stop()
        # RLlib's EnvRunner restored from the checkpoint, acting with explore=False.
        player = config.copy(copy_frozen=False).env_runners(explore=False).build_algo()
        try:
            player.restore(checkpoint)
            RecordingEnv.episodes.clear()
            player.env_runner_group.local_env_runner.sample()
        finally:
            player.stop()
    finally:
        ray.shutdown()
    steps = [step for episode in RecordingEnv.episodes for step in episode]
    np.savez(
        Path(out, "truth.npz"),
        obs=np.array([obs for obs, _, _ in steps]),
        actions=np.array([int(action) for _, action, _ in steps]),
    )


if __name__ == "__main__":
    main(sys.argv[1])
