"""The commands the demo prints at the end (examples/cartpole_ppo.py) run as printed from a
fresh shell: no activated venv, no PYTHONPATH, another working directory. The servers'
ports are swapped for free ones; everything else is run verbatim."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rllib_mlflow import log_checkpoint
from tests.mlflow_server import free_port, start_process

pytestmark = pytest.mark.slow
FRESH_ENV = {
    "HOME": os.environ.get("HOME", "/root"),
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
}


def _commands(text: str) -> list[str]:
    """The indented command lines of the hints, continuation lines joined."""
    joined = text.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.startswith("    ")]


def _fresh_shell(command: str, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", "-c", command], cwd=cwd, env=FRESH_ENV, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _serves(command: str, url: str, ready_path: str, cwd, log: Path) -> None:
    """The server started from a fresh shell answers url + ready_path (start_process's wait,
    its output in `log`), then is stopped."""
    start_process(["bash", "-c", command], url, ready_path, log, env=FRESH_ENV, cwd=cwd).stop()


def test_the_demo_hints_run_as_printed_from_a_fresh_shell(trained_checkpoint, tmp_path, capsys):
    from examples.cartpole_ppo import MODEL_NAME, print_next_steps

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    os.makedirs(tmp_path / "store")
    log_checkpoint(
        trained_checkpoint("ppo_cartpole").path, MODEL_NAME, training_iteration=3,
        formats=["onnx"], metrics={"env_runners": {"episode_return_mean": 30.0}}, tracking_uri=uri,
    )  # fmt: skip
    capsys.readouterr()
    print_next_steps(uri)
    ui, versions, serve, load = _commands(capsys.readouterr().out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert shutil.which("mlflow", path=FRESH_ENV["PATH"]) is None  # not there without the venv

    ui_port, serve_port = free_port(), free_port()
    _serves(ui.replace("--port 5000", f"--port {ui_port}"), f"http://127.0.0.1:{ui_port}",
            "/health", elsewhere, tmp_path / "ui.log")  # fmt: skip
    _serves(serve.replace("-p 5001", f"-p {serve_port}"), f"http://127.0.0.1:{serve_port}",
            "/ping", elsewhere, tmp_path / "serve.log")  # fmt: skip
    for command, expected in ((versions, r"^1\s+best\s"), (load, r"^\[[01]\]$")):
        process = _fresh_shell(command, elsewhere)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
        assert re.search(expected, output, re.M), output[-3000:]
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # nothing written where it ran
