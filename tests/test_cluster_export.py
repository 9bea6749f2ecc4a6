"""Parallel exports keep each trial's registrations in order, once each, with `@best` right:
as Ray actors on a two-node cluster (`export_on="cluster"`), and as several export
processes on the driver's machine."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rllib_mlflow.tune.journal import JOURNAL_FILE
from tests import tune_job
from tests.cluster_export_job import ONE_FORMAT
from tests.mlflow_server import TORCH_ONLY, subprocess_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ITERATIONS = 3


def assert_ordered_exactly_once(uri: str, trial_ids: list[str], journal: Path) -> None:
    """One version per (trial, iteration); a trial's versions numbered in iteration order;
    `best` on the best `metric.episode_return_mean`; a `registered` journal line each."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name = '{tune_job.MODEL_NAME}'", max_results=1000)
    keys = [(v.tags["trial_id"], int(v.tags["training_iteration"])) for v in versions]
    assert len(keys) == len(set(keys)), collections.Counter(keys)
    expected = {(t, i) for t in trial_ids for i in range(1, ITERATIONS + 1)}
    assert set(keys) == expected

    for trial_id in trial_ids:
        ordered = sorted(
            (v for v in versions if v.tags["trial_id"] == trial_id),
            key=lambda v: int(v.tags["training_iteration"]),
        )
        numbers = [int(v.version) for v in ordered]
        assert numbers == sorted(numbers), (trial_id, numbers)

    best_value = max(float(v.tags["metric.episode_return_mean"]) for v in versions)
    holder = client.get_model_version_by_alias(tune_job.MODEL_NAME, "best")
    assert float(holder.tags["metric.episode_return_mean"]) == best_value

    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    registered = [e["key"] for e in entries if e["event"] == "registered"]
    assert sorted(registered) == sorted(f"{t}/{i}" for t, i in expected)


def test_ray_actors_on_two_nodes_register_in_order_once_each(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    output = tmp_path / "summary.json"
    completed = subprocess.run(
        [sys.executable, "-m", "tests.cluster_export_job", "--storage", str(tmp_path / "results")]
        + ["--tracking-uri", uri, "--output", str(output), "--trials", "3"]
        + ["--iterations", str(ITERATIONS)],
        cwd=ROOT,
        env=subprocess_env(RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT), **TORCH_ONLY),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    summary = json.loads(output.read_text())
    assert summary["errors"] == []
    assert summary["nodes"] == 2
    assert len(summary["trial_ids"]) == 3
    journal = tmp_path / "results" / tune_job.EXPERIMENT / JOURNAL_FILE
    assert_ordered_exactly_once(uri, summary["trial_ids"], journal)
    export_nodes = summary["export_nodes"]
    assert len(export_nodes) == 3 * ITERATIONS, export_nodes  # every registration said where
    assert set(export_nodes.values()) == {summary["head_node_id"], summary["worker_node_id"]}


def test_three_export_processes_register_in_order_once_each(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    results = tune_job.run(
        str(tmp_path / "results"),
        uri,
        ITERATIONS,
        learning_rates=(1e-3, 5e-4, 3e-4, 2e-4),
        callback_kwargs={"export_on": "driver", "export_workers": 3, **ONE_FORMAT},
    )
    assert not results.errors
    trial_ids = sorted(result.metrics["trial_id"] for result in results)
    assert len(trial_ids) == 4
    journal = tmp_path / "results" / tune_job.EXPERIMENT / JOURNAL_FILE
    assert_ordered_exactly_once(uri, trial_ids, journal)


def test_unknown_export_on_is_refused_with_what_to_pass(monkeypatch):
    from rllib_mlflow import MLflowCheckpointCallback

    with pytest.raises(ValueError, match="export_on must be 'driver' .* or 'cluster'"):
        MLflowCheckpointCallback("fine-name", export_on="nodes")
    monkeypatch.setenv("RLLIB_MLFLOW_EXPORT_ON", "gpu")
    with pytest.raises(ValueError, match="RLLIB_MLFLOW_EXPORT_ON must be 'driver'"):
        MLflowCheckpointCallback("fine-name")
    monkeypatch.setenv("RLLIB_MLFLOW_EXPORT_ON", "cluster")
    assert MLflowCheckpointCallback("fine-name").export_on == "cluster"


def test_export_processes_starting_together_on_a_new_sqlite_file_all_work(tmp_path):
    """MLflow creates its tables on first use; several processes doing so at once on one new
    SQLite file leave it half migrated ("table ... already exists")."""
    import threading

    from rllib_mlflow.tune.worker import WorkerProcess

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    replies: dict[str, dict] = {}
    all_replied = threading.Event()

    def on_reply(worker, key: str, reply: dict) -> None:
        if key:  # not the exits that stop() causes
            replies[key] = reply
        if len(replies) == 3:
            all_replied.set()

    workers = [WorkerProcess(on_reply, {"tracking_uri": uri}) for _ in range(3)]
    try:
        for index, worker in enumerate(workers):
            trial = {"trial_id": f"t{index}", "name": f"trial-{index}", "experiment_dir_name": "e"}
            worker.start()
            worker.submit({"op": "start_run", "key": f"start-{index}", "trial": trial})
        assert all_replied.wait(timeout=120), replies
    finally:
        for worker in workers:
            worker.stop()
    assert replies == {
        f"start-{index}": {"key": f"start-{index}", "done": True} for index in range(3)
    }
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("e").experiment_id]
    )
    assert len(runs) == 3
