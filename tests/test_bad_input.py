"""Bad input that the other test modules do not cover: each fails early with a message that
names the problem and the fix (a malformed tracking URI, an unreachable server for the
callback, an s3:// checkpoint without credentials)."""

from __future__ import annotations

import time

import pytest

from rllib_mlflow.errors import CheckpointError, TrackingError
from tests.mlflow_server import free_port


@pytest.mark.parametrize("uri", ["htp:/nowhere", "ftp://x", "localhost:5000", "http//host"])
def test_malformed_tracking_uri_fails_the_callback_construction(uri):
    from rllib_mlflow import MLflowCheckpointCallback, MLflowLoggerCallback

    for make in (lambda: MLflowCheckpointCallback("fine-name", tracking_uri=uri),
                 lambda: MLflowLoggerCallback(tracking_uri=uri)):  # fmt: skip
        with pytest.raises(TrackingError, match="Malformed tracking URI") as info:
            make()
        assert repr(uri) in str(info.value)
        assert "http://localhost:5000" in str(info.value)  # what a good one looks like


def test_malformed_tracking_uri_fails_log_checkpoint_before_any_export(tmp_path):
    from rllib_mlflow import log_checkpoint

    with pytest.raises(TrackingError, match="Malformed tracking URI 'htp:/nowhere'"):
        log_checkpoint(str(tmp_path), "fine-name", tracking_uri="htp:/nowhere")


def test_malformed_tracking_uri_never_echoes_a_password():
    from rllib_mlflow.mlflow.client import validate_tracking_uri

    with pytest.raises(TrackingError) as info:
        validate_tracking_uri("htp://user:planted-pw@host")
    assert "planted-pw" not in str(info.value)


def test_unwritable_sqlite_database_fails_the_callback_setup(tmp_path):
    from rllib_mlflow import MLflowCheckpointCallback

    (tmp_path / "a-file").write_text("")
    cases = {
        f"sqlite:///{tmp_path}/missing/mlflow.db": "does not exist",
        f"sqlite:///{tmp_path}/a-file/mlflow.db": "is not a directory",
    }
    for uri, problem in cases.items():
        callback = MLflowCheckpointCallback("fine-name", tracking_uri=uri)
        with pytest.raises(TrackingError, match="Cannot write the MLflow database") as info:
            callback.setup()
        assert problem in str(info.value) and "MLFLOW_TRACKING_URI" in str(info.value)
        assert callback._dispatcher is None  # no worker started, nothing queued


def test_unreachable_server_fails_the_callback_setup_quickly():
    from rllib_mlflow import MLflowCheckpointCallback

    dead = f"http://127.0.0.1:{free_port()}"
    callback = MLflowCheckpointCallback("fine-name", tracking_uri=dead)
    started = time.monotonic()
    with pytest.raises(TrackingError, match="Cannot reach the MLflow tracking server") as info:
        callback.setup()
    assert dead in str(info.value) and "MLFLOW_TRACKING_URI" in str(info.value)
    assert time.monotonic() - started < 15  # not MLflow's minutes of HTTP retries


def test_s3_checkpoint_without_credentials_says_which_variables_to_set(monkeypatch, tmp_path):
    from rllib_mlflow.rllib.uris import local_checkpoint_dir

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(CheckpointError) as info:
        local_checkpoint_dir("s3://ray/results/exp/trial/checkpoint_000001")
    message = str(info.value)
    assert "s3://ray/results/exp/trial/checkpoint_000001" in message
    assert "No AWS credentials" in message
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message


@pytest.mark.parametrize("form", ["file", "path"])
def test_file_store_uris_are_refused_with_the_reason_unless_mlflow_allows_them(
    trained_checkpoint, tmp_path, monkeypatch, form
):
    from rllib_mlflow import MLflowLoggerCallback, load_policy, log_checkpoint

    store = tmp_path / "mlruns"
    uri = f"file://{store}" if form == "file" else str(store)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TrackingError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        MLflowLoggerCallback(tracking_uri=uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as MLflow itself asks
    MLflowLoggerCallback(tracking_uri=uri)
    checkpoint = trained_checkpoint("ppo_cartpole")
    versions = log_checkpoint(checkpoint.path, "file-store", tracking_uri=uri, formats=["onnx"])
    policy = load_policy(f"models:/file-store/{versions[0].version}", tracking_uri=uri)
    assert policy.compute_actions(checkpoint.make_env().observation_space.sample()).shape == (1,)
