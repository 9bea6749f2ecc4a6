"""RLlib's old API stack through the pipeline: a TF2 Tune experiment registered by the
callback, a two-policy torch experiment backfilled with `rllib-mlflow register`, registered
versions loaded on both backends and served by `mlflow models serve`, and the old-stack LSTM
stepped through `load_policy`; each acting like RLlib on real episodes.

Everything is trained once, in `tests.old_stack_pipeline_job` (a subprocess: RLlib's TF2
policies need TensorFlow started with TF_USE_LEGACY_KERAS=1, which this process is not).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from rllib_mlflow import _tensorflow_first  # noqa: F401  (eager TF for load_policy; see there)
from rllib_mlflow.tune.journal import JOURNAL_FILE
from rllib_mlflow.tune.worker import WorkerProcess
from tests.mlflow_server import post_json, start_model_server, subprocess_env
from tests.old_stack_pipeline_job import EPISODES, ITERATIONS, TUNE_MODEL

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # continuous actions; discrete ones must be identical
BACKFILLED = "old-stack-two-policy"
LSTM_MODEL = "old-stack-lstm"


@dataclass(frozen=True)
class Runs:
    root: Path
    uri: str
    runs: dict[str, dict[str, str]]

    def checkpoint(self, name: str) -> str:
        return self.runs[name]["checkpoint"]

    def truth(self, name: str, policy_id: str = "default_policy") -> dict[str, np.ndarray]:
        data = np.load(self.runs[name]["truth"])
        return {kind: data[f"{policy_id}/{kind}"] for kind in ("obs", "actions", "starts")}

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def versions(self, name: str) -> list:
        found = self.client().search_model_versions(f"name = '{name}'", max_results=100)
        return sorted(found, key=lambda v: int(v.tags["training_iteration"]))


def _without_legacy_keras() -> dict[str, str]:
    env = subprocess_env(PYTHONPATH=str(ROOT))
    env.pop("TF_USE_LEGACY_KERAS", None)
    return env


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rllib_mlflow.cli", *args],
        cwd=ROOT,
        env=_without_legacy_keras(),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("old_stack_pipeline")
    uri = f"sqlite:///{root}/mlflow.db"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.old_stack_pipeline_job", str(root), uri],
        cwd=ROOT,
        env=_without_legacy_keras(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return Runs(root, uri, json.loads((root / "runs.json").read_text()))


@pytest.fixture(scope="module")
def backfilled(trained) -> Runs:
    experiment = trained.root / "results" / "torch_two_policy"
    proc = _cli("register", str(experiment), "--name", BACKFILLED, "--tracking-uri", trained.uri)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return trained


def _results(trial_dir: Path) -> dict[int, dict]:
    lines = (trial_dir / "result.json").read_text().splitlines()
    return {r["training_iteration"]: r for r in map(json.loads, lines)}


def _assert_acts_like_rllib(actions, truth: np.ndarray, discrete: bool) -> None:
    actions = np.asarray(actions).reshape(truth.shape)
    if discrete:
        np.testing.assert_array_equal(actions, truth)
    else:
        np.testing.assert_allclose(actions, truth, rtol=0, atol=TOLERANCE)


# -- the processes rllib-mlflow starts ---------------------------------------------------------


def _environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_the_export_worker_starts_with_tf_keras_as_tf_keras(monkeypatch):
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    worker = WorkerProcess(lambda *reply: None, {})
    worker.start()
    try:
        assert _environment(worker.pid)["TF_USE_LEGACY_KERAS"] == "1"
    finally:
        worker.stop()


# -- the Tune callback on a TF2 experiment -----------------------------------------------------


def test_callback_registers_each_tf2_checkpoint_with_its_iteration_and_metrics(trained):
    """The job's driver has no TF_USE_LEGACY_KERAS (Ray's processes get it from the
    runtime_env): the export worker the callback starts must arrange it for the TF2 policy."""
    versions = trained.versions(TUNE_MODEL)
    assert [int(v.tags["training_iteration"]) for v in versions] == list(range(1, ITERATIONS + 1))
    trial_dir = Path(trained.checkpoint("tf2_pendulum")).parent
    results = _results(trial_dir)
    for version in versions:
        result = results[int(version.tags["training_iteration"])]
        want = result["env_runners"]["episode_return_mean"]
        assert float(version.tags["metric.episode_return_mean"]) == pytest.approx(want)
        assert version.tags["num_env_steps_sampled_lifetime"] == (
            f"{result['num_env_steps_sampled_lifetime']:.6g}"
        )
        assert version.tags["algorithm"] == "PPO" and version.tags["env_id"] == "Pendulum-v1"
        assert version.tags["formats"] == "saved_model,h5,onnx"
        assert float(version.tags["parity_max_abs_diff"]) <= TOLERANCE
    best = max(versions, key=lambda v: float(v.tags["metric.episode_return_mean"]))
    assert trained.client().get_model_version_by_alias(TUNE_MODEL, "best").version == best.version
    journal = trial_dir.parent / JOURNAL_FILE
    events = [json.loads(line)["event"] for line in journal.read_text().splitlines()]
    assert events.count("registered") == ITERATIONS and "failed" not in events


def test_tf2_version_loads_on_both_backends_and_acts_like_rllib(trained):
    from rllib_mlflow import load_policy

    truth = trained.truth("tf2_pendulum")  # from the experiment's last checkpoint
    uri = f"models:/{TUNE_MODEL}@iter-{ITERATIONS}"
    for backend in ("onnxruntime", "tensorflow"):
        policy = load_policy(uri, backend=backend, tracking_uri=trained.uri)
        assert policy.metadata["preprocessing"][0]["type"] == "mean_std_filter"
        _assert_acts_like_rllib(policy.compute_actions(truth["obs"]), truth["actions"], False)


def test_tf2_version_served_by_mlflow_acts_like_rllib(trained, tmp_path):
    from rllib_mlflow.mlflow.versions import find_version

    truth = trained.truth("tf2_pendulum")
    # MLflow resolves the URI itself: `@iter-N` is ours (through the tags), so name the version.
    version = find_version(f"models:/{TUNE_MODEL}@iter-{ITERATIONS}", tracking_uri=trained.uri)
    uri = f"models:/{TUNE_MODEL}/{version.version}"
    server = start_model_server(uri, trained.uri, tmp_path / "serve.log")
    try:
        status, body = post_json(f"{server.uri}/invocations", {"inputs": truth["obs"].tolist()})
    finally:
        server.stop()
    assert status == 200, body
    _assert_acts_like_rllib(body["predictions"], truth["actions"], False)


# -- `rllib-mlflow register` on a two-policy torch experiment ----------------------------------


def test_register_backfills_each_policy_as_its_own_registered_model(backfilled):
    trial_dir = Path(backfilled.checkpoint("torch_two_policy")).parent
    results = _results(trial_dir)
    for policy_id in ("p0", "p1"):
        versions = backfilled.versions(f"{BACKFILLED}-{policy_id}")
        assert [int(v.tags["training_iteration"]) for v in versions] == list(
            range(1, ITERATIONS + 1)
        )
        assert {v.tags["module_id"] for v in versions} == {policy_id}
        for version in versions:
            want = results[int(version.tags["training_iteration"])]["env_runners"]
            assert float(version.tags["metric.episode_return_mean"]) == pytest.approx(
                want["episode_return_mean"]
            )
        best = backfilled.client().get_model_version_by_alias(f"{BACKFILLED}-{policy_id}", "best")
        assert best.version in {v.version for v in versions}
    assert backfilled.versions(BACKFILLED) == []  # two policies: no model under the bare name


def test_each_backfilled_policy_loads_and_acts_like_rllib(backfilled):
    from rllib_mlflow import load_policy

    for policy_id in ("p0", "p1"):
        truth = backfilled.truth("torch_two_policy", policy_id)
        uri = f"models:/{BACKFILLED}-{policy_id}@iter-{ITERATIONS}"
        for backend in ("onnxruntime", "tensorflow"):
            policy = load_policy(uri, backend=backend, tracking_uri=backfilled.uri)
            _assert_acts_like_rllib(policy.compute_actions(truth["obs"]), truth["actions"], True)


# -- the old-stack LSTM ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lstm_registered(trained) -> Runs:
    """Both LSTM checkpoints registered by `rllib-mlflow register` (which exports each with
    its parity check), as LSTM_MODEL-torch and LSTM_MODEL-tf2."""
    for framework in ("torch", "tf2"):
        checkpoint = trained.checkpoint(f"{framework}_lstm")
        name = f"{LSTM_MODEL}-{framework}"
        proc = _cli("register", checkpoint, "--name", name, "--tracking-uri", trained.uri)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return trained


@pytest.mark.parametrize("framework", ["torch", "tf2"])
def test_lstm_steps_through_load_policy_like_rllib_on_real_episodes(lstm_registered, framework):
    from rllib_mlflow import load_policy

    truth = lstm_registered.truth(f"{framework}_lstm")
    assert truth["starts"].sum() == EPISODES  # real episodes, each from the initial state
    (version,) = lstm_registered.versions(f"{LSTM_MODEL}-{framework}")
    assert float(version.tags["parity_max_abs_diff"]) <= TOLERANCE
    for backend in ("onnxruntime", "tensorflow"):
        policy = load_policy(
            f"models:/{LSTM_MODEL}-{framework}/{version.version}",
            backend=backend,
            tracking_uri=lstm_registered.uri,
        )
        assert policy.is_stateful and policy.state_names == ["h", "c"]
        actions = []
        for obs, start in zip(truth["obs"], truth["starts"]):
            if start:
                state = policy.initial_state(1)
            action, state = policy.step(obs[None], state)
            actions.append(action[0])
        _assert_acts_like_rllib(actions, truth["actions"], True)
