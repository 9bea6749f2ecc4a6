"""RLlib's old API stack through the pipeline: the processes rllib-mlflow starts build TF
policies with tf_keras, and a user's own process is told what to set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rllib_mlflow.tune.worker import WorkerProcess


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


def test_a_process_with_keras_3_as_tf_keras_is_told_what_to_set():
    """A user's loop that imported TensorFlow without TF_USE_LEGACY_KERAS: one line says
    what to set, and nothing changes the process's tf.keras behind its back."""
    code = (
        "import tensorflow as tf; tf.keras.layers.Dense\n"
        "from rllib_mlflow.legacy_keras import require_legacy_keras\n"
        "require_legacy_keras('checkpoint_000002/policies/default_policy')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rllib_mlflow.errors.UnsupportedModuleError: checkpoint_000002/")
    assert "old-API-stack TensorFlow policy" in last
    assert "tf.keras is Keras 3: set TF_USE_LEGACY_KERAS=1" in last
    assert "before TensorFlow is imported" in last


def test_with_the_variable_set_the_same_process_can_build_old_stack_tf_policies():
    code = (
        "import os; os.environ['TF_USE_LEGACY_KERAS'] = '1'\n"
        "from rllib_mlflow.legacy_keras import legacy_keras_problem\n"
        "print(legacy_keras_problem())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "None"
