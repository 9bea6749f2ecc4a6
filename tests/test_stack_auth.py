"""Basic auth and secrets on the production stack.

`mlflow server --app-name basic-auth` runs on the same PostgreSQL and S3 stores. The callback
authenticates with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD; bad or missing
credentials fail its `setup()`, before Tune starts a trial. After a real run through it, the
planted secrets (PostgreSQL password, S3 secret key, MLflow admin password) appear nowhere:
not in PostgreSQL, not in any object of any bucket, not in the experiment directory or its
journal, not in any server's log.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from unittest import mock

import pytest

from rllib_mlflow import MLflowCheckpointCallback
from rllib_mlflow.errors import TrackingError
from tests.stack import (  # noqa: F401
    ADMIN_USER,
    POSTGRES_DB,
    POSTGRES_USER,
    auth_tracking_server,
    production_stack,
    run_tune_on_s3,
)

pytestmark = pytest.mark.slow
MODEL = "auth-ppo"
READER = "reader"
ADMIN_EXPERIMENT = "admin-experiment"


@pytest.mark.parametrize(
    "username, password",
    [(ADMIN_USER, "not-the-password"), ("nobody", "whatever"), (None, None)],
    ids=["wrong-password", "unknown-user", "no-credentials"],
)
def test_bad_credentials_fail_setup_before_training(
    auth_tracking_server,  # noqa: F811
    monkeypatch,
    username,
    password,
):
    for name, value in (("USERNAME", username), ("PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(f"MLFLOW_TRACKING_{name}", raising=False)
        else:
            monkeypatch.setenv(f"MLFLOW_TRACKING_{name}", value)
    callback = MLflowCheckpointCallback(MODEL, tracking_uri=auth_tracking_server)
    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_USERNAME") as error:
        callback.setup()
    assert "refused" in str(error.value)
    assert callback._dispatcher is None  # no worker started, nothing queued


@pytest.fixture(scope="module")
def authenticated_run(ray_session, production_stack, auth_tracking_server):  # noqa: F811
    """One Tune iteration through the basic-auth server, storage on S3 configured by the
    environment only (as on a cluster), with the planted secrets in the environment."""
    saved = dict(os.environ)
    os.environ.update(production_stack.client_environment())
    os.environ["MLFLOW_TRACKING_USERNAME"] = ADMIN_USER
    os.environ["MLFLOW_TRACKING_PASSWORD"] = production_stack.admin_password
    experiment = f"auth-{uuid.uuid4().hex[:8]}"
    try:
        results = run_tune_on_s3(
            production_stack,
            auth_tracking_server,
            experiment,
            iterations=1,
            model_name=MODEL,
            storage_filesystem=False,
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert not results.errors, results.errors
    return experiment, results


def test_the_callback_authenticates_and_registers(production_stack, authenticated_run):  # noqa: F811
    rows = production_stack.query(
        "SELECT t.value FROM model_version_tags t WHERE t.name = %s AND t.key = %s",
        (MODEL, "training_iteration"),
    )
    assert rows == [("1",)]


# -- a user who may read but not write ----------------------------------------------------


def _as_user(username: str, password: str):
    return mock.patch.dict(
        os.environ, {"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}
    )


@pytest.fixture(scope="module")
def reader_password(production_stack, auth_tracking_server, authenticated_run):  # noqa: F811
    """READER has the server's default permission, READ, on what the admin created: the
    experiment ADMIN_EXPERIMENT and the registered model MODEL."""
    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient

    password = "reader-" + secrets.token_hex(8)
    with _as_user(ADMIN_USER, production_stack.admin_password):
        AuthServiceClient(auth_tracking_server).create_user(READER, password)
        MlflowClient(auth_tracking_server).create_experiment(ADMIN_EXPERIMENT)
    return password


@pytest.mark.parametrize(
    "model, experiment, refused",
    [
        ("reader-model", ADMIN_EXPERIMENT, f"experiment '{ADMIN_EXPERIMENT}'"),
        (MODEL, "reader-experiment", f"registered model '{MODEL}'"),
    ],
    ids=["experiment", "registered-model"],
)
def test_missing_write_permission_fails_setup_before_training(
    auth_tracking_server,  # noqa: F811
    reader_password,
    model,
    experiment,
    refused,
):
    callback = MLflowCheckpointCallback(
        model, tracking_uri=auth_tracking_server, experiment_name=experiment
    )
    with _as_user(READER, reader_password), pytest.raises(TrackingError) as error:
        callback.setup()
    message = str(error.value)
    assert f"does not let user '{READER}' write to {refused}" in message
    assert "EDIT permission" in message and reader_password not in message
    assert callback._dispatcher is None  # no worker started, nothing queued


_LOAD_AS_READER = textwrap.dedent(
    """
    import json, sys
    from rllib_mlflow import load_policy

    policy = load_policy(sys.argv[2], training_iteration=1, tracking_uri=sys.argv[1])
    actions = policy.compute_actions([[0.0, 0.1, 0.0, -0.1]] * 3)
    print(json.dumps({
        "actions": actions.tolist(),
        "version": policy.metadata["version"],
        "mlflow_imported": "mlflow" in sys.modules,
    }))
    """
)


def test_read_only_user_loads_a_policy_over_rest(auth_tracking_server, reader_password):  # noqa: F811
    """load_policy authenticates its REST lookups and artifact downloads like MLflow does."""
    from rllib_mlflow import load_policy

    with _as_user(READER, reader_password):
        result = subprocess.run(
            [sys.executable, "-c", _LOAD_AS_READER, auth_tracking_server, MODEL],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=120,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["version"] == "1" and loaded["mlflow_imported"] is False
    assert len(loaded["actions"]) == 3 and set(loaded["actions"]) <= {0, 1}
    with _as_user(READER, "wrong-password"), pytest.raises(TrackingError, match="refused"):
        load_policy(MODEL, training_iteration=1, tracking_uri=auth_tracking_server)


def _pg_dump(stack) -> str:
    completed = subprocess.run(
        [
            str(stack.postgres.bin / "pg_dump"),
            "-h",
            "127.0.0.1",
            "-p",
            str(stack.postgres.port),
            "-U",
            POSTGRES_USER,
            "--data-only",
            POSTGRES_DB,
        ],  # fmt: skip
        env={**os.environ, "PGPASSWORD": stack.postgres.password},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return completed.stdout


def _bucket_contents(stack) -> dict[str, bytes]:
    s3 = stack.s3_client()
    contents = {}
    for bucket in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read()
                contents[f"s3://{bucket['Name']}/{item['Key']}"] = body
    return contents


def _files(*roots: Path) -> dict[str, bytes]:
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                found[str(path)] = path.read_bytes()
    return found


def test_no_secret_is_stored_or_logged_anywhere(production_stack, authenticated_run):  # noqa: F811
    experiment, _ = authenticated_run
    dump = _pg_dump(production_stack)
    assert "auth-ppo" in dump and "model_versions" in dump  # the dump holds the registry
    objects = _bucket_contents(production_stack)
    assert any(key.endswith("/model.onnx") for key in objects)
    assert any(key.startswith("s3://ray/ray-results/") for key in objects)
    # The experiment's local mirror (journal, staging), the stack's directory (server logs,
    # the basic-auth user database, SeaweedFS's data files) and PostgreSQL's log.
    local_experiment = Path(os.path.expanduser("~/ray_results")) / experiment
    assert (local_experiment / "rllib_mlflow_journal.jsonl").is_file()
    files = _files(local_experiment, production_stack.root)
    files.update({str(p): p.read_bytes() for p in production_stack.log_files()})
    assert any(name.endswith("mlflow-auth.log") for name in files)
    haystacks = {"pg_dump": dump.encode(), **objects, **files}
    for what, secret in production_stack.secrets.items():
        leaks = [name for name, data in haystacks.items() if secret.encode() in data]
        assert not leaks, f"the {what} appears in {leaks}"


def test_credentials_saved_by_mlflow_login_are_used_over_rest(
    auth_tracking_server,  # noqa: F811
    reader_password,
    tmp_path,
):
    """~/.mlflow/credentials (where `mlflow login` saves them) authenticates the fast REST
    path as it does MLflow's own client, with no credentials in the environment."""
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = {READER}\n"
        f"mlflow_tracking_password = {reader_password}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_AS_READER, auth_tracking_server, MODEL],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(tmp_path)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["version"] == "1" and loaded["mlflow_imported"] is False
    without = subprocess.run(  # the same, without the file: the server refuses
        [sys.executable, "-c", _LOAD_AS_READER, auth_tracking_server, MODEL],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(tmp_path / "nowhere")},
        timeout=120,
    )
    assert without.returncode != 0 and "refused" in without.stderr
