"""RLlib's old API stack through the pipeline: the processes rllib-mlflow starts build TF
policies with tf_keras, and a user's own process is told what to set."""

from __future__ import annotations

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
