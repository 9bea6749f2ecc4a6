"""What the Tune callbacks check in `setup()`, before any trial starts.

The store must be reachable and accept our credentials, and we must be allowed to write to
the experiment and the registered model; else the user hears it now, not after hours of
training. Tune waits for these checks, so they are cheap: an HTTP(S) server is asked over
REST (no `import mlflow`), and a SQLite file only needs a writable place. Other stores
(e.g. PostgreSQL directly) go through MLflow's client.
"""

from __future__ import annotations

import os
from pathlib import Path

from rllib_mlflow import environment_variables as env
from rllib_mlflow import names
from rllib_mlflow._version import __version__
from rllib_mlflow.errors import TrackingError
from rllib_mlflow.mlflow import runs
from rllib_mlflow.mlflow.client import (
    check_tracking_server,
    check_write_access,
    client,
    is_file_store,
    registered_model_exists,
    validate_tracking_uri,
)
from rllib_mlflow.mlflow.registry_client import RegistryClient
from rllib_mlflow.mlflow.rest import rest_client
from rllib_mlflow.redaction import mask_urls


def check_tracking_store(
    tracking_uri: str | None,
    *,
    registry_uri: str | None = None,
    experiment_name: str | None = None,
    experiment_id: str | None = None,
    registered_model_name: str | None = None,
) -> None:
    """Raise TrackingError, saying what to do, unless logging there can work."""
    uri = env.tracking_uri(tracking_uri)
    if is_file_store(uri):
        validate_tracking_uri(uri)  # refused unless MLFLOW_ALLOW_FILE_STORE
        _check_writable_directory(Path(uri.removeprefix("file://")).absolute(), uri)
        return
    if uri.startswith("sqlite:"):
        _check_sqlite_writable(uri)
        return
    mlflow_client = rest_client(uri) or client(uri)
    check_tracking_server(mlflow_client)
    if experiment_id:
        _check_experiment_id(mlflow_client, experiment_id)
    elif experiment_name:
        check_write_access(
            mlflow_client,
            f"experiment {experiment_name!r}",
            lambda: mlflow_client.set_experiment_tag(
                runs.experiment_id(mlflow_client, experiment_name), names.TAG_WRITER, __version__
            ),
        )
    if registered_model_name:
        models = mlflow_client
        registry_uri = env.registry_uri(registry_uri, uri)
        if registry_uri != uri:
            models = rest_client(registry_uri) or client(uri, registry_uri)

        def tag_model_if_it_exists() -> None:  # else the first registration creates it
            if registered_model_exists(models, registered_model_name):
                models.set_registered_model_tag(
                    registered_model_name, names.TAG_WRITER, __version__
                )

        check_write_access(
            models, f"registered model {registered_model_name!r}", tag_model_if_it_exists
        )


def _check_experiment_id(mlflow_client: RegistryClient, experiment_id: str) -> None:
    """MLFLOW_EXPERIMENT_ID must name an experiment we may write to."""
    try:
        mlflow_client.get_experiment(experiment_id)
    except Exception as error:
        raise TrackingError(
            f"MLFLOW_EXPERIMENT_ID={experiment_id} names no experiment on "
            f"{mask_urls(mlflow_client.tracking_uri)} ({str(error)[:200]}). Unset it, "
            "set it to an existing experiment's id, or pass experiment_name=."
        ) from error
    check_write_access(
        mlflow_client,
        f"experiment {experiment_id}",
        lambda: mlflow_client.set_experiment_tag(experiment_id, names.TAG_WRITER, __version__),
    )


def _check_writable_directory(directory: Path, uri: str) -> None:
    if directory.exists() and not os.access(directory, os.W_OK | os.X_OK):
        raise TrackingError(f"Cannot write the MLflow file store {uri}: it is not writable.")
    if not directory.exists() and not os.access(directory.parent, os.W_OK | os.X_OK):
        raise TrackingError(
            f"Cannot create the MLflow file store {uri}: {directory.parent} is not writable."
        )


def _check_sqlite_writable(uri: str) -> None:
    """SQLite needs to write the database file and its journal next to it."""
    database = uri.split("?", 1)[0].removeprefix("sqlite:///")
    if not uri.startswith("sqlite:///") or database in ("", ":memory:"):
        return  # an in-memory database
    path = Path(database).absolute()
    directory = path.parent
    problem = None
    if not directory.exists():
        problem = f"its directory {directory} does not exist"
    elif not directory.is_dir():
        problem = f"{directory} is not a directory"
    elif not os.access(directory, os.W_OK | os.X_OK):
        problem = f"its directory {directory} is not writable"
    elif path.exists() and not os.access(path, os.R_OK | os.W_OK):
        problem = "the file is not writable"
    if problem:
        raise TrackingError(
            f"Cannot write the MLflow database {path}: {problem}. Pass a writable "
            "tracking_uri (e.g. 'sqlite:////path/to/mlflow.db') or a tracking server's "
            "address, or set MLFLOW_TRACKING_URI."
        )
