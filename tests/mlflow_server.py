"""Real MLflow processes for the tests: a tracking server and `mlflow models serve`.

`mlflow_server` (session fixture) starts ``mlflow server`` with a SQLite backend store and a
local artifact root on 127.0.0.1 at a free port, and stops it at the end of the session.
Test modules import the fixture (``from tests.mlflow_server import mlflow_server``) and
pass ``tracking_uri=mlflow_server.uri`` explicitly, so nothing depends on the environment.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

VENV_BIN = str(Path(sys.executable).parent)


# RLlib imports TensorFlow whenever it is installed: 8 of the 12 s `import ray.rllib` takes.
# A process (and its Ray workers) that reads torch checkpoints only is spared it; our own TF
# formats still work there (TensorFlow is imported for them, not through RLlib).
TORCH_ONLY = {"RLLIB_TEST_NO_TF_IMPORT": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PortTaken(RuntimeError):
    """The free port a server was given was taken before it could bind it."""


def on_a_free_port(start: Callable[[int], ServerProcess], tries: int = 3) -> ServerProcess:
    """`start(port)` on a free port, again on another one if the port was taken meanwhile
    (Ray's processes pick free ports the same way, and a CI run once answered our readiness
    probe with a gRPC server's bytes)."""
    for _ in range(tries - 1):
        try:
            return start(free_port())
        except PortTaken:
            pass
    return start(free_port())


def subprocess_env(**extra: str) -> dict[str, str]:
    """The test environment with the venv's bin first on PATH (for uvicorn, mlflow)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # MLflow 3's server starts a job runner and seven huey consumers for its GenAI jobs; no
    # test uses them, and with several servers starting at once they made a start take 102 s.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.update(extra)
    return env


@dataclass
class ServerProcess:
    """A started server: its URL, process and log file."""

    uri: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            # The server runs in its own session: stop it and its workers together.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def start_process(
    command: Sequence[str],
    url: str,
    ready_path: str,
    log: Path,
    *,
    env=None,
    cwd=None,
    timeout=300.0,
) -> ServerProcess:
    """Start `command` in its own process group and wait until GET url+ready_path is 200.
    The wait is generous: on a contended host `mlflow server` took 102 s to start (it exits
    early on a real error, which fails at once)."""
    stream = open(log, "wb")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(
        list(command),
        stdout=stream,
        stderr=subprocess.STDOUT,
        env=env or subprocess_env(),
        cwd=cwd,
        start_new_session=True,
    )
    stream.close()
    server = ServerProcess(url, process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = (
                PortTaken if "address already in use" in server.log_tail().lower() else RuntimeError
            )
            raise error(f"{command[0]} exited with {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(url + ready_path, timeout=2) as response:
                if response.status == 200:
                    return server
        # An answer that is not HTTP is another process on the port: ours exits shortly.
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"{command[0]} not ready after {timeout} s:\n{server.log_tail()}")


def start_tracking_server(
    root: Path,
    port: int | None = None,
    log_name: str = "server.log",
    *,
    proxy_artifacts: bool = True,
    artifact_root: str | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """`mlflow server` on SQLite in `root`. Its artifacts go through the server's proxy, or
    with `proxy_artifacts=False` clients write and read them directly in `artifact_root`
    (default `root/artifacts`; e.g. s3://bucket/path, with the S3 settings in `env`)."""
    if port is None:
        return on_a_free_port(
            lambda free: start_tracking_server(
                root,
                free,
                log_name,
                proxy_artifacts=proxy_artifacts,
                artifact_root=artifact_root,
                env=env,
            )
        )
    root.mkdir(parents=True, exist_ok=True)
    artifact_root = artifact_root or str(root / "artifacts")
    artifacts = (
        ["--artifacts-destination", artifact_root]
        if proxy_artifacts
        else ["--default-artifact-root", artifact_root, "--no-serve-artifacts"]
    )
    command = [
        os.path.join(VENV_BIN, "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        *artifacts,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    url = f"http://127.0.0.1:{port}"
    return start_process(command, url, "/health", root / log_name, env=subprocess_env(**env or {}))


def start_model_server(
    model_uri: str,
    tracking_uri: str,
    log: Path,
    *,
    mlflow_executable: str | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """`mlflow models serve -m model_uri --env-manager local` on a free port, run from the
    log's directory (uvicorn puts its working directory on sys.path)."""
    return on_a_free_port(
        lambda port: _start_model_server(model_uri, tracking_uri, log, port, mlflow_executable, env)
    )


def _start_model_server(
    model_uri: str,
    tracking_uri: str,
    log: Path,
    port: int,
    mlflow_executable: str | None,
    env: dict[str, str] | None,
) -> ServerProcess:
    command = [
        mlflow_executable or os.path.join(VENV_BIN, "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
        "--workers",
        "1",
    ]
    env = dict(env or subprocess_env())
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    url = f"http://127.0.0.1:{port}"
    return start_process(command, url, "/ping", log, env=env, cwd=log.parent, timeout=300)


def post_json(url: str, payload: Any, timeout: float = 60) -> tuple[int, Any]:
    """POST JSON; returns (status, decoded body) for successes and HTTP errors alike."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, body.decode(errors="replace")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real `mlflow server` (SQLite + local artifacts) for the whole session."""
    server = start_tracking_server(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield server
    finally:
        server.stop()
