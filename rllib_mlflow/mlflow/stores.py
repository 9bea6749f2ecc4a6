"""Which MLflow store a command uses, and checking it before any work.

Reading commands (`versions`, `evaluate`, `prune`) never create a store: MLflow's client
creates an empty `mlflow.db` (or `mlruns/`) wherever it is pointed, so a typo or an unset
MLFLOW_TRACKING_URI would silently look at a new, empty store. A tracking server is probed
first, with MLflow's own HTTP retries bounded, so that a dead address fails in seconds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from rllib_mlflow import environment_variables as env
from rllib_mlflow.errors import RegistryError, TrackingError
from rllib_mlflow.mlflow.client import check_tracking_server, client, registered_model
from rllib_mlflow.mlflow.registry_client import RegisteredModelInfo, RegistryReader
from rllib_mlflow.mlflow.rest import rest_client
from rllib_mlflow.mlflow.sql_reader import sql_reader
from rllib_mlflow.redaction import mask_urls

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHECK_TIMEOUT_S = "10"  # per request while checking; a probe, then one registry call


def resolve(tracking_uri: str | None) -> str:
    """The store a command uses: `environment_variables.tracking_uri`."""
    return env.tracking_uri(tracking_uri)


def shown(uri: str) -> str:
    """The URI without credentials, for messages."""
    return mask_urls(uri)


def check(uri: str, *, must_exist: bool) -> MlflowClient:
    """An MlflowClient for `uri`, once the store is known to answer (and, with `must_exist`,
    to be there already)."""
    if must_exist:
        _require_local_store(uri)
    mlflow_client = client(uri)
    if uri.startswith(("http://", "https://")):
        with bounded_http_retries():
            check_tracking_server(mlflow_client)
    return mlflow_client


def reader(uri: str) -> RegistryReader:
    """A client for reading (`versions`, `prune --dry-run`), which spares the command
    `import mlflow` (seconds of its start): our RestClient against an HTTP(S) server, our
    SqlReader on a database, else `check(uri)`'s MlflowClient."""
    rest = rest_client(uri)
    if rest is not None:
        check_tracking_server(rest)
        return rest
    _require_local_store(uri)
    return sql_reader(uri) or check(uri, must_exist=True)


def require_model(mlflow_client: RegistryReader, name: str, uri: str) -> RegisteredModelInfo:
    """The registered model `name` (its aliases are what `versions` shows); one line naming
    the store and what it holds when `name` is not there."""
    with bounded_http_retries():
        model = registered_model(mlflow_client, name)
        if model is not None:
            return model
        models = mlflow_client.search_registered_models(max_results=20)
        names = sorted(m.name for m in models)
    held = f"registered models there: {', '.join(names)}" if names else "it has none"
    raise RegistryError(f"No registered model {name!r} in {shown(uri)} ({held}).")


@contextlib.contextmanager
def bounded_http_retries() -> Iterator[None]:
    """MLflow retries a failing server for minutes by default: not while we only check."""
    saved = {k: os.environ.get(k) for k in _BOUNDED}
    os.environ.update(_BOUNDED)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_BOUNDED = {
    env.MLFLOW_HTTP_REQUEST_MAX_RETRIES.name: "1",
    env.MLFLOW_HTTP_REQUEST_TIMEOUT.name: CHECK_TIMEOUT_S,
}


def _require_local_store(uri: str) -> None:
    path = _local_path(uri)
    if path is not None and not os.path.exists(path):
        raise TrackingError(
            f"No MLflow store at {shown(uri)} ({os.path.abspath(path)} does not exist). "
            "Pass --tracking-uri or set MLFLOW_TRACKING_URI to the store that holds your models."
        )


def _local_path(uri: str) -> str | None:
    """The file or directory behind a sqlite:// or file store URI; None for servers."""
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///") :] or None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return parsed.path
    if not parsed.scheme:
        return uri
    return None
