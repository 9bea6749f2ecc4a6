"""`rllib-mlflow export` as a user runs it: the installed console script, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("rllib-mlflow"))
REPO = str(Path(__file__).resolve().parents[1])


def run_cli(*args: str, pythonpath: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    # Each call costs a fresh interpreter importing TF, torch and Ray (~10-20 s): keep few.
    # No TF_CPP_MIN_LOG_LEVEL: the command itself must keep TensorFlow quiet.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]  # a runtime failure; 2 is for usage
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rllib-mlflow: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for word in words:
        assert word in errors[0]


@pytest.mark.slow
def test_export_onnx_and_h5(trained_checkpoint, tmp_path):
    tc = trained_checkpoint("ppo_cartpole")
    out = tmp_path / "out"
    proc = run_cli("export", tc.path, "-o", str(out), "--formats", "onnx,h5", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only our own messages: no TensorFlow C++ logs, absl, Ray deprecations or warnings.
    assert all(line.startswith("rllib-mlflow: ") for line in proc.stderr.splitlines()), proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.h5", "model.onnx", "policy.json"]
    policy = json.loads((out / "policy.json").read_text())
    assert policy["formats"] == ["onnx", "h5"] and policy["parity"]["passed"]
    assert policy["training_iteration"] == tc.training_iteration
    (record,) = json.loads(proc.stdout)
    assert record["module_id"] == "default_policy" and record["path"] == str(out)
    assert record["formats"] == ["onnx", "h5"] and record["parity_passed"] is True


def test_not_a_checkpoint_exits_1_with_one_line(tmp_path):
    proc = run_cli("export", str(tmp_path / "missing"), "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "missing", "is not a directory")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_unknown_module_id_exits_1_with_one_line(trained_checkpoint, tmp_path):
    tc = trained_checkpoint("ppo_multiagent")
    # The checkpoint's config refers to tests.envs.policy_mapping_fn: make it importable.
    proc = run_cli(
        "export", tc.path, "-o", str(tmp_path / "out"), "--module-id", "nope", pythonpath=REPO
    )
    assert_one_line_error(proc, "'nope'", "'p0'", "'p1'")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_checkpoint_naming_code_that_is_not_here_still_exports(trained_checkpoint, tmp_path):
    """Its config names the test suite's env and policy_mapping_fn, which the command's
    process cannot import: RLlib's own restore would fail on them, but inference needs none
    of them, and the checkpoint's pickles are read as data (rllib/pickles.py)."""
    tc = trained_checkpoint("ppo_multiagent")
    proc = run_cli("export", tc.path, "-o", str(tmp_path / "out"), "--module-id", "p0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "policy.json").read_text())["parity"]["passed"]
