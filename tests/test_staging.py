"""The bound on staged checkpoint copies: past it the callback exports the checkpoint from
where Tune keeps it, journals that, says so, and training goes on."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rllib_mlflow.tune.journal import JOURNAL_FILE
from rllib_mlflow.tune.staging import STAGING_DIR, Staging, StagingLimit
from tests import tune_job


def _checkpoint(directory, size: int):
    from ray.tune import Checkpoint

    directory.mkdir(parents=True)
    (directory / "weights.bin").write_bytes(os.urandom(size))
    return Checkpoint.from_directory(str(directory))


def test_staging_refuses_past_the_count_and_makes_room_on_release(tmp_path):
    staging = Staging(StagingLimit(count=2))
    staged = [
        staging.stage(_checkpoint(tmp_path / f"c{i}", 1000), tmp_path / "exp", "t", i)
        for i in range(3)
    ]
    assert staged[0] and staged[1] and staged[2] is None
    assert all(os.path.isdir(path) for path in staged[:2])
    staging.release(staged[0])
    assert not os.path.exists(staged[0])
    assert staging.stage(_checkpoint(tmp_path / "c3", 1000), tmp_path / "exp", "t", 3)


def test_a_staged_copy_outlives_tune_deleting_the_checkpoint(tmp_path):
    """What staging is for: `num_to_keep` deletes the original before its export."""
    import shutil

    original = tmp_path / "checkpoint"
    checkpoint = _checkpoint(original, 1000)
    content = (original / "weights.bin").read_bytes()
    staged = Staging(StagingLimit()).stage(checkpoint, tmp_path / "exp", "t", 1)
    shutil.rmtree(original)
    assert (Path(staged) / "weights.bin").read_bytes() == content


def test_staging_refuses_past_the_bytes(tmp_path):
    staging = Staging(StagingLimit(count=None, bytes=1500))
    first = staging.stage(_checkpoint(tmp_path / "c0", 1000), tmp_path / "exp", "t", 0)
    second = staging.stage(_checkpoint(tmp_path / "c1", 1000), tmp_path / "exp", "t", 1)
    assert first and second  # the first 1,000 bytes are under the bound
    assert staging.stage(_checkpoint(tmp_path / "c2", 1000), tmp_path / "exp", "t", 2) is None
    assert staging.peak_bytes == 2000


def test_staging_bounds_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("RLLIB_MLFLOW_MAX_STAGED", "3")
    monkeypatch.setenv("RLLIB_MLFLOW_MAX_STAGED_BYTES", "4096")
    assert StagingLimit.from_env() == StagingLimit(count=3, bytes=4096)
    assert StagingLimit.from_env(count=5) == StagingLimit(count=5, bytes=4096)
    monkeypatch.setenv("RLLIB_MLFLOW_MAX_STAGED", "many")
    with pytest.raises(ValueError, match="RLLIB_MLFLOW_MAX_STAGED must be a whole number"):
        StagingLimit.from_env()


@pytest.mark.slow
def test_past_the_bound_checkpoints_are_exported_in_place_and_all_registered(
    ray_session, tmp_path, caplog
):
    """One staged copy at most, two export processes, two trials: every checkpoint is still
    registered once, the journal records which were read in place, and no copy is left."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with caplog.at_level(logging.WARNING, logger="rllib_mlflow"):
        results = tune_job.run(
            str(tmp_path / "results"),
            uri,
            iterations=3,
            num_to_keep=None,
            callback_kwargs={"max_staged": 1, "export_workers": 2, "formats": ("onnx",)},
        )
    assert not results.errors
    versions = MlflowClient(uri, uri).search_model_versions(f"name = '{tune_job.MODEL_NAME}'")
    keys = sorted((v.tags["trial_id"], int(v.tags["training_iteration"])) for v in versions)
    trials = {r.metrics["trial_id"] for r in results}
    assert keys == sorted((t, i) for t in trials for i in (1, 2, 3))

    experiment = tmp_path / "results" / tune_job.EXPERIMENT
    entries = [json.loads(line) for line in (experiment / JOURNAL_FILE).read_text().splitlines()]
    queued = [e for e in entries if e["event"] == "queued"]
    in_place = [e for e in queued if e["checkpoint"] == e["checkpoint_uri"]]
    staged = [e for e in queued if STAGING_DIR in e["checkpoint"]]
    assert len(queued) == 6 and in_place and staged
    assert len([e for e in entries if e["event"] == "registered"]) == 6
    assert "staging is full" in caplog.text
    leftovers = [p for p in (experiment / STAGING_DIR).rglob("checkpoint_*")]
    assert leftovers == []


# -- nothing left behind (issue 37) ---------------------------------------------------------


def test_registered_staged_copies_are_removed_and_nothing_else(tmp_path):
    from rllib_mlflow.tune.journal import QUEUED, REGISTERED, Journal
    from rllib_mlflow.tune.staging import remove_registered_copies

    journal = Journal(tmp_path)
    staged = {i: tmp_path / STAGING_DIR / "t1" / f"checkpoint_{i:06d}" for i in (1, 2)}
    in_place = tmp_path / "t1" / "checkpoint_000003"  # past the bound: never staged
    for i, path in [*staged.items(), (3, in_place)]:
        path.mkdir(parents=True)
        (path / "weights.bin").write_bytes(b"x" * 100)
        journal.record(QUEUED, f"t1/{i}", checkpoint=str(path), checkpoint_uri=str(path),
                       training_iteration=i)  # fmt: skip
    for i in (1, 3):
        journal.record(REGISTERED, f"t1/{i}", versions=[])
    freed = remove_registered_copies(tmp_path, journal.registered_checkpoints())
    assert freed == 100
    assert not staged[1].exists() and staged[2].exists(), "only the registered copy goes"
    assert in_place.exists(), "a checkpoint outside the staging directory is never deleted"


def test_exports_of_stopped_processes_are_swept_and_live_ones_kept(tmp_path, monkeypatch):
    import subprocess
    import sys

    from rllib_mlflow.scratch import EXPORT_PREFIX, sweep_orphaned_exports

    monkeypatch.setenv("RLLIB_MLFLOW_TMPDIR", str(tmp_path))
    stopped = subprocess.Popen([sys.executable, "-c", "pass"])
    stopped.wait()
    orphan = tmp_path / f"{EXPORT_PREFIX}{stopped.pid}_a1b2" / "p0"
    live = tmp_path / f"{EXPORT_PREFIX}{os.getpid()}_c3d4" / "p0"
    unowned = tmp_path / f"{EXPORT_PREFIX}e5f6"  # an older release's name: not ours to judge
    for directory in (orphan, live, unowned):
        directory.mkdir(parents=True)
        (directory / "model.onnx").write_bytes(b"x" * 50)
    assert sweep_orphaned_exports() == 50
    assert not orphan.parent.exists()
    assert live.exists() and unowned.exists()
