"""`rllib-mlflow register` as a backfill of a user's archive: checkpoint directories found by
their files whatever their names, past unreadable ones (named, exit 1), with --formats and
--workers; and the recognition of checkpoint directories on its own (no training)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from rllib_mlflow import names
from rllib_mlflow.cli import cli
from rllib_mlflow.tune.archive import find_checkpoints, written_by

CLI = str(Path(sys.executable).with_name("rllib-mlflow"))
NAME = "backfilled"
MODULE = Path("learner_group", "learner", "rl_module", "default_policy")
# Where each copy of the trained checkpoint goes in the archive, and the training iteration
# it is given: algo.save() directories with a user's names, one and two levels down; two
# folders called seed_0 in different places are different runs.
LAYOUT = {
    "ppo_run1_iter5": 5,
    "runA/first": 1,
    "runA/second": 2,
    "ppo/seed_0/x": 3,
    "sac/seed_0/x": 3,
}


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=900, env=env)


def _copy_at_iteration(source: str, target: Path, iteration: int) -> None:
    """A copy of an algo.save() checkpoint that records `iteration` (one trained checkpoint
    stands in for a run's many)."""
    shutil.copytree(source, target)
    state_file = target / "algorithm_state.pkl"
    state = pickle.loads(state_file.read_bytes())
    state["training_iteration"] = iteration
    state_file.write_bytes(pickle.dumps(state))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.fixture(scope="module")
def archive(trained_checkpoint, tmp_path_factory) -> Path:
    source = trained_checkpoint("ppo_cartpole").path
    root = tmp_path_factory.mktemp("archive") / "my_archive"
    for relative, iteration in LAYOUT.items():
        _copy_at_iteration(source, root / relative, iteration)
    return root


@pytest.fixture(scope="module")
def registered(archive, tmp_path_factory) -> tuple[subprocess.CompletedProcess, str]:
    """The archive registered with one worker (the default), ONNX only."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    proc = _cli("register", str(archive), "--name", NAME, "--formats", "onnx",
                "--tracking-uri", uri)  # fmt: skip
    return proc, uri


def _versions(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client.search_model_versions(f"name = '{NAME}'")


def _checkpoints_registered(uri: str) -> Counter:
    """(run name, training iteration) of each version, counted."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return Counter(
        (client.get_run(v.run_id).info.run_name, int(v.tags[names.VERSION_TAG_ITERATION]))
        for v in _versions(uri)
    )


@pytest.mark.slow
def test_algo_save_directories_with_any_names_register_one_version_each(registered):
    proc, uri = registered
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"{len(LAYOUT)} checkpoint(s) registered or already there, 0 failed" in proc.stdout
    assert f"{len(LAYOUT)}/{len(LAYOUT)}" in proc.stderr  # the progress bar's done/total
    # One run per folder: the archive itself holds ppo_run1_iter5.
    assert _checkpoints_registered(uri) == Counter(
        {("my_archive", 5): 1, ("runA", 1): 1, ("runA", 2): 1, ("seed_0", 3): 2}
    )
    trials = {v.tags[names.VERSION_TAG_TRIAL_ID] for v in _versions(uri)}
    assert len(trials) == 4  # the two seed_0 folders are two runs


@pytest.mark.slow
def test_formats_onnx_registers_only_onnx(registered):
    proc, uri = registered
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for version in _versions(uri):
        assert version.tags[names.VERSION_TAG_FORMATS] == "onnx"
        model_id = version.source.removeprefix("models:/")
        files = {f.path for f in client.list_logged_model_artifacts(model_id, "data")}
        assert "data/model.onnx" in files, files
        assert not {"data/saved_model", "data/model.h5"} & files, files


@pytest.mark.slow
def test_workers_2_registers_the_same_set_once_each(archive, registered, tmp_path):
    _, one_worker_uri = registered
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for attempt in ("first", "again"):  # a rerun registers nothing new
        proc = _cli("register", str(archive), "--name", NAME, "--formats", "onnx",
                    "--workers", "2", "--tracking-uri", uri)  # fmt: skip
        assert proc.returncode == 0, (attempt, proc.stdout[-2000:] + proc.stderr[-3000:])
        assert f"{len(LAYOUT)}/{len(LAYOUT)}" in proc.stderr
        assert _checkpoints_registered(uri) == _checkpoints_registered(one_worker_uri)
        assert len(_versions(uri)) == len(LAYOUT)


@pytest.mark.slow
def test_unreadable_checkpoints_are_named_and_the_others_registered(archive, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(archive / "runA", damaged / "runA")
    shutil.copytree(archive / "ppo_run1_iter5", damaged / "unreadable_state")
    shutil.copytree(archive / "ppo_run1_iter5", damaged / "unreadable_weights")
    # Unreadable when listing (its iteration), and when exporting (its module's weights).
    _truncate(damaged / "unreadable_state" / "algorithm_state.pkl")
    _truncate(damaged / "unreadable_weights" / MODULE / "module_state.pkl")
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    proc = _cli("register", str(damaged), "--name", NAME, "--formats", "onnx",
                "--tracking-uri", uri, "--json")  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    (report,) = json.loads(proc.stdout)
    assert len(report["registered"]) == 2
    bad = {str((damaged / n).resolve()) for n in ("unreadable_state", "unreadable_weights")}
    assert set(report["failed"]) == bad
    assert all(report["written_by"][path].startswith("2.") for path in bad)
    failures = [line for line in proc.stderr.splitlines() if "rllib-mlflow: failed " in line]
    assert len(failures) == 2
    for line in failures:  # path, the Ray that wrote it, one line of cause
        assert any(f"failed {path} (written by Ray 2." in line for path in bad), line
        assert "truncated" in line or "corrupt" in line, line
    assert _checkpoints_registered(uri) == Counter({("runA", 1): 1, ("runA", 2): 1})


def test_bad_formats_are_refused_as_export_refuses_them(tmp_path):
    runner = CliRunner()
    export = runner.invoke(cli, ["export", str(tmp_path), "-o", str(tmp_path / "out"),
                                 "--formats", "onnx,pickle"])  # fmt: skip
    for command in ("register", "sync"):
        refused = runner.invoke(cli, [command, str(tmp_path), "--name", NAME,
                                      "--formats", "onnx,pickle"])  # fmt: skip
        assert refused.exit_code == export.exit_code == 1, refused.output
        assert refused.stderr == export.stderr
        assert "Unknown export format(s) ['pickle']" in refused.stderr
    assert runner.invoke(cli, ["register", str(tmp_path), "--name", NAME,
                               "--workers", "0"]).exit_code == 2  # fmt: skip


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def test_checkpoint_directories_are_recognised_by_their_files(tmp_path):
    root = tmp_path / "archive"
    _touch(root / "algo_a" / "rllib_checkpoint.json")
    _touch(root / "old" / "algo_b" / "algorithm_state.pkl")
    _touch(root / "policies" / "policy_c" / "policy_state.pkl")
    (root / "deep" / "er" / "algo_d" / "learner_group").mkdir(parents=True)
    _touch(root / "module_e" / "class_and_ctor_args.pkl")
    _touch(root / "module_e" / "module_state.pt")
    _touch(root / "trial" / "checkpoint_000001" / "partial")  # Tune's name: cut short
    _touch(root / "not_a_module" / "class_and_ctor_args.pkl")  # no module_state.*
    _touch(root / ".rllib_mlflow_staging" / "t" / "copy" / "rllib_checkpoint.json")
    _touch(root / "a" / "b" / "c" / "too_deep" / "rllib_checkpoint.json")
    # Nothing inside a checkpoint is taken for another one.
    _touch(root / "algo_a" / "learner_group" / "learner" / "rl_module" / "p" / "module_state.pkl")
    found = [p.relative_to(root).as_posix() for p in find_checkpoints(root)]
    assert found == [
        "algo_a", "deep/er/algo_d", "module_e", "old/algo_b", "policies/policy_c",
        "trial/checkpoint_000001",
    ]  # fmt: skip
    assert find_checkpoints(root / "algo_a") == [root / "algo_a"]
    (root / "algo_a" / "rllib_checkpoint.json").write_text('{"ray_version": "2.9.3"}')
    assert written_by(root / "algo_a") == "2.9.3" and written_by(root / "module_e") is None
