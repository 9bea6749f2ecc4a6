"""The Tune callbacks on real Tune sweeps: versions, LoggedModels, aliases, metrics, params,
Ctrl-C plus `rllib-mlflow sync`, `Tuner.restore`, and bad input that must not stop training."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rllib_mlflow.errors import RegistryError
from rllib_mlflow.mlflow.versions import find_version
from rllib_mlflow.tune.journal import JOURNAL_FILE
from tests import tune_job
from tests.cards import assert_card, assert_card_and_replay
from tests.mlflow_server import TORCH_ONLY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(uri: str, name: str = tune_job.MODEL_NAME) -> list:
    return _client(uri).search_model_versions(f"name = '{name}'", max_results=1000)


def _keys(versions) -> list[tuple[str, int]]:
    return [(v.tags["trial_id"], int(v.tags["training_iteration"])) for v in versions]


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    """Two trials, three iterations, a checkpoint each iteration, num_to_keep=1, replays."""
    root = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{root}/mlflow.db"
    results = tune_job.run(
        str(root / "results"), uri, iterations=3, num_to_keep=1, callback_kwargs={"video": True}
    )
    return uri, results, root


def test_every_checkpoint_of_every_trial_is_one_version(sweep):
    uri, results, _ = sweep
    versions = _versions(uri)
    trial_ids = {r.metrics["trial_id"] for r in results}
    assert len(trial_ids) == 2
    assert sorted(_keys(versions)) == sorted((t, i) for t in trial_ids for i in (1, 2, 3))
    assert sorted(int(v.version) for v in versions) == list(range(1, 7))  # no gaps


def test_versions_carry_tags_and_aliases(sweep):
    uri, _, _ = sweep
    client = _client(uri)
    versions = _versions(uri)
    for version in versions:
        tags = version.tags
        assert tags["algorithm"] == "PPO"
        assert tags["env_id"] == "CartPole-v1"
        assert tags["module_id"] == "default_policy"
        assert tags["formats"] == "saved_model,h5,onnx"
        assert float(tags["parity_max_abs_diff"]) < 1e-5
        assert tags["trial_name"].startswith("PPO_CartPole-v1_")
        assert float(tags["episode_return_mean"]) > 0
        assert float(tags["num_env_steps_sampled_lifetime"]) == 200 * int(
            tags["training_iteration"]
        )
        assert tags["checkpoint_uri"].endswith(
            f"checkpoint_{int(tags['training_iteration']) - 1:06d}"
        )
        for key in ("ray_version", "mlflow_version", "rllib_mlflow_version"):
            assert tags[key]
    aliases = client.get_registered_model(tune_job.MODEL_NAME).aliases
    assert set(aliases) == {"best"}  # `@iter-N` resolves through the tags
    for iteration in (1, 2, 3):
        version = find_version(f"models:/{tune_job.MODEL_NAME}@iter-{iteration}", tracking_uri=uri)
        assert version.tags["training_iteration"] == str(iteration)
    best = max(versions, key=lambda v: float(v.tags["metric.episode_return_mean"]))
    best_value = float(best.tags["metric.episode_return_mean"])
    holder = client.get_model_version_by_alias(tune_job.MODEL_NAME, "best")
    assert float(holder.tags["metric.episode_return_mean"]) == best_value


def test_each_version_is_a_logged_model_at_its_step_with_metrics(sweep):
    uri, _, _ = sweep
    client = _client(uri)
    for version in _versions(uri):
        model_id = version.model_id or version.source.removeprefix("models:/")
        model = client.get_logged_model(model_id)
        assert model.source_run_id == version.run_id
        run = client.get_run(version.run_id)
        steps = {o.model_id: o.step for o in run.outputs.model_outputs}
        assert steps[model_id] == int(version.tags["training_iteration"])
        linked = {m.key for m in model.metrics or []}
        assert "env_runners/episode_return_mean" in linked


def test_each_version_has_a_card_and_a_replay(sweep):
    uri, _, _ = sweep
    client = _client(uri)
    for version in _versions(uri):
        card = assert_card_and_replay(client, version)
        assert f"`{version.tags['trial_name']}`" in card
        assert f"{int(version.tags['num_env_steps_sampled_lifetime']):,}" in card
        assert "passed: max abs diff" in card and "`Discrete(2)`" in card
        assert "hunter2-secret" not in card
    family = client.get_registered_model(tune_job.MODEL_NAME).description
    assert "6 version(s) from 2 trial(s)" in family
    assert f'"models:/{tune_job.MODEL_NAME}@iter-N"' in family  # through the tags, no aliases


def test_each_trial_run_has_metrics_per_iteration_and_redacted_params(sweep):
    uri, results, _ = sweep
    client = _client(uri)
    run_ids = {v.run_id for v in _versions(uri)}
    assert len(run_ids) == 2
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run_id, "env_runners/episode_return_mean")
        assert sorted({m.step for m in history}) == [1, 2, 3]
        params = run.data.params
        assert params["learner_config_dict/api_token"] == "***"
        assert "hunter2-secret" not in json.dumps(params)
        assert params["learner_config_dict/level"] == "1"
        assert params["lr"] in ("0.001", "0.0003")


def test_plain_training_loop_registers_with_log_checkpoint(ray_session, tmp_path):
    """Without Tune: `algo.train()`, `algo.save()`, `log_checkpoint(...)`."""
    from rllib_mlflow import log_checkpoint

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    algo = tune_job.ppo_config(learning_rates=(1e-3,)).training(lr=1e-3).build_algo()
    try:
        for _ in range(2):
            result = algo.train()
            path = algo.save(
                str(tmp_path / f"checkpoint_{result['training_iteration']}")
            ).checkpoint
            log_checkpoint(path, "plain-loop", metrics=result, tracking_uri=uri)
    finally:
        algo.stop()
    versions = _versions(uri, "plain-loop")
    assert sorted(int(v.tags["training_iteration"]) for v in versions) == [1, 2]
    holder = find_version("models:/plain-loop@iter-2", tracking_uri=uri)
    assert holder.tags["training_iteration"] == "2"
    card = assert_card(_client(uri), holder)  # a card, and no replay unless asked
    assert "No replay yet" in card and "replay" not in holder.tags


def test_invalid_model_name_is_refused_at_construction():
    from rllib_mlflow import MLflowCheckpointCallback

    started = time.monotonic()
    with pytest.raises(RegistryError, match="Invalid registered model name"):
        MLflowCheckpointCallback("team/model")
    with pytest.raises(ValueError, match="best_mode"):
        MLflowCheckpointCallback("fine-name", best_mode="highest")
    assert time.monotonic() - started < 1


# -- Ctrl-C, sync and restore, in a subprocess ---------------------------------------------


# The interrupted job also names a best_metric its results lack: a user's typo must not stop
# training, only the 'best' alias (one Tune job serves both).
UNKNOWN_BEST_METRIC = "episode_reward_mean"


def _start_job(storage: Path, uri: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", **TORCH_ONLY}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.tune_job", "--storage", str(storage)]
        + ["--tracking-uri", uri, "--iterations", "8", "--best-metric", UNKNOWN_BEST_METRIC]
        + ["--formats", "onnx", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _interrupt_after_checkpoints(process: subprocess.Popen, journal: Path, count: int) -> str:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and journal.read_text().count('"event": "queued"') >= count:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the job ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=300)
    return output


def _persisted_checkpoints(experiment: Path) -> set[tuple[str, int]]:
    from rllib_mlflow.rllib.layout import read_training_iteration

    found = set()
    for result in experiment.glob("*/result.json"):
        lines = result.read_text().splitlines()
        if not lines:  # a trial interrupted before its first result
            continue
        trial_id = json.loads(lines[0])["trial_id"]
        for checkpoint in result.parent.glob("checkpoint_*"):
            found.add((trial_id, read_training_iteration(str(checkpoint))))
    return found


def _run_sync(experiment: Path, uri: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / ".venv/bin/rllib-mlflow"), "sync", str(experiment), "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", **TORCH_ONLY},
    )


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupted")
    uri = f"sqlite:///{root}/mlflow.db"
    experiment = root / "results" / tune_job.EXPERIMENT
    process = _start_job(root / "results", uri)
    output = _interrupt_after_checkpoints(process, experiment / JOURNAL_FILE, count=3)
    return root, uri, experiment, output


def test_sigint_then_sync_registers_every_persisted_checkpoint_once(interrupted):
    _, uri, experiment, output = interrupted
    assert "rllib-mlflow" in output or _versions(uri), output[-3000:]
    persisted = _persisted_checkpoints(experiment)
    assert len(persisted) >= 3
    sync = _run_sync(experiment, uri)
    assert sync.returncode == 0, sync.stdout[-2000:] + sync.stderr[-3000:]
    keys = _keys(_versions(uri))
    assert set(keys) == persisted
    assert len(keys) == len(set(keys)), collections.Counter(keys)
    again = _run_sync(experiment, uri)  # idempotent
    assert again.returncode == 0
    assert sorted(_keys(_versions(uri))) == sorted(keys)


def test_unknown_best_metric_warns_and_training_goes_on(interrupted):
    _, uri, experiment, output = interrupted
    warning = f"best_metric {UNKNOWN_BEST_METRIC!r} is not in the trial results"
    assert warning in output, output[-3000:]
    assert output.count(warning) == 1  # said once, not per result
    assert len(_persisted_checkpoints(experiment)) >= 3  # training went on past the first
    assert _versions(uri)  # registered (by the callback or the sync before this test)
    assert "best" not in _client(uri).get_registered_model(tune_job.MODEL_NAME).aliases


def test_a_sync_before_tune_copies_result_json_keeps_the_callbacks_trial_ids(interrupted, tmp_path):
    # While a run is live, Tune copies result.json into the experiment folder only every
    # sync_period: a sync meanwhile finds checkpoints whose trial it cannot name from there.
    _, _, experiment, _ = interrupted
    persisted = _persisted_checkpoints(experiment)
    live = tmp_path / experiment.name
    shutil.copytree(experiment, live, ignore=shutil.ignore_patterns("*.lock"))
    trial_dirs = sorted(r.parent for r in live.glob("*/result.json"))
    (trial_dirs[0] / "result.json").unlink()  # not copied yet at all
    for trial_dir in trial_dirs[1:]:
        (trial_dir / "result.json").write_text("")  # copied before the first result
    journal = [json.loads(line) for line in (live / JOURNAL_FILE).open()]
    started = {e["directory"]: e["key"] for e in journal if e["event"] == "trial"}
    assert set(started) == {d.name for d in trial_dirs}, journal[:3]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sync = _run_sync(live, uri)
    assert sync.returncode == 0, sync.stdout[-2000:] + sync.stderr[-3000:]
    keys = _keys(_versions(uri))
    assert sorted(keys) == sorted(persisted), keys  # no "dir-..." ids, none twice


def test_restore_continues_without_duplicate_versions(interrupted):
    root, uri, experiment, _ = interrupted
    before = _client(uri).search_runs(
        [e.experiment_id for e in _client(uri).search_experiments()], max_results=100
    )
    process = _start_job(root / "results", uri, "--restore")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]
    keys = _keys(_versions(uri))
    assert len(keys) == len(set(keys)), collections.Counter(keys)
    iterations = collections.defaultdict(set)
    for trial_id, iteration in keys:
        iterations[trial_id].add(iteration)
    assert len(iterations) == 2
    for trial_iterations in iterations.values():  # the restored trials finished their 8
        assert max(trial_iterations) == 8, (dict(iterations), output[-6000:])
    after = _client(uri).search_runs(
        [e.experiment_id for e in _client(uri).search_experiments()], max_results=100
    )
    assert {r.info.run_id for r in after} == {r.info.run_id for r in before}  # runs continued
