"""The client boundary: which tracking store we talk to, whether it answers and lets us
write, and MLflow's and our REST client's errors turned into `TrackingError`.

Every lookup takes a client that is either an `MlflowClient` or our `RestClient`;
`client_errors` names what either raises when the server answers with an error, so callers
catch one tuple instead of two kinds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, cast, overload

from rllib_mlflow import environment_variables as env
from rllib_mlflow.errors import TrackingError
from rllib_mlflow.extras import require_full_mlflow
from rllib_mlflow.mlflow.rest import RestClient
from rllib_mlflow.mlflow.sql_reader import SqlReader
from rllib_mlflow.mlflow.transport import RestApiError, RestPermissionError
from rllib_mlflow.redaction import mask_urls

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._model_registry.client import ModelRegistryClient

    from rllib_mlflow.mlflow.registry_client import (
        RegisteredModelInfo,
        RegistryClient,
        RegistryReader,
    )

    # What a client raises when the server answers with an error: all carry `message`
    # and `error_code`.
    ClientError: TypeAlias = RestApiError | RestPermissionError | MlflowException

_TRACKING_URI = re.compile(
    r"(https?://[^/\s]+.*|(sqlite|postgresql|mysql|mssql)(\+\w+)?://.+|databricks(-uc)?(://.*)?|uc:.+)"
)


def client(tracking_uri: str | None = None, registry_uri: str | None = None) -> MlflowClient:
    """An MlflowClient for `tracking_uri` and `registry_uri`, resolved as
    `environment_variables.tracking_uri` and `registry_uri` say; the URIs passed and
    MLFLOW_REGISTRY_URI are validated, MLflow's own defaults are not."""
    import mlflow

    explicit_registry = registry_uri or env.MLFLOW_REGISTRY_URI.value() or tracking_uri
    tracking = env.tracking_uri(tracking_uri)
    registry = env.registry_uri(registry_uri, tracking_uri)
    for uri in (tracking, registry):
        _require_readable_here(uri)
    for given in (tracking_uri, explicit_registry):
        if given is not None:
            validate_tracking_uri(given)
    # No registry given: MLflow's own choice (e.g. Unity Catalog for "databricks").
    return mlflow.MlflowClient(tracking_uri=tracking, registry_uri=explicit_registry)


def _require_readable_here(uri: str) -> None:
    """The light install (mlflow-skinny) reads tracking servers only: a database or a file
    store gets one line naming what to install, not MLflow's registry exception."""
    if not isinstance(uri, str):
        return
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme in _DATABASES:
        require_full_mlflow(_DATABASES[scheme], mask_urls(uri))
    elif is_file_store(uri):
        require_full_mlflow("MLflow's file store", uri)


_DATABASES = {
    "sqlite": "a SQLite database",
    "postgresql": "a PostgreSQL database",
    "mysql": "a MySQL database",
    "mssql": "a SQL Server database",
}


def validate_tracking_uri(uri: str) -> str:
    """Refuse a tracking URI MLflow cannot use, before anything is queued or exported."""
    if isinstance(uri, str) and is_file_store(uri):
        if not env.MLFLOW_ALLOW_FILE_STORE.enabled():
            raise TrackingError(
                f"{uri!r} is MLflow's file store, which MLflow 3 refuses unless "
                "MLFLOW_ALLOW_FILE_STORE=true (it is in maintenance mode). Use a database, "
                "e.g. 'sqlite:///mlflow.db', or set MLFLOW_ALLOW_FILE_STORE=true."
            )
        return uri
    if not isinstance(uri, str) or not _TRACKING_URI.fullmatch(uri.strip()):
        raise TrackingError(
            f"Malformed tracking URI {mask_urls(str(uri))!r}: use the server's address, e.g. "
            "'http://localhost:5000', or a database, e.g. 'sqlite:///mlflow.db' or "
            "'postgresql://user@host/db' (credentials in MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD, not in the URI)."
        )
    return uri


def is_file_store(uri: str) -> bool:
    """A `file:` URI or a local path (`mlruns`, `./mlruns`, `/data/mlruns`): MLflow's file
    store. `http//host` (no scheme, a double slash) is a typo, not a path."""
    if uri.startswith("file:"):
        return True
    path = re.fullmatch(r"[~./\w][^:\s]*", uri) and "//" not in uri
    return bool(path) and uri not in ("databricks", "databricks-uc")


def check_tracking_server(mlflow_client: RegistryClient) -> None:
    """Fail fast, with the URI, when the tracking server is unreachable or refuses us."""
    uri = mlflow_client.tracking_uri
    _probe_http_server(uri)
    try:
        # A name no one registers: the search of a name that exists computes that model's
        # latest versions, O(versions) on MLflow's SQL store; this probes the same access.
        mlflow_client.search_registered_models(filter_string=_PROBE_FILTER, max_results=1)
    except TrackingError:
        raise
    except client_errors(mlflow_client) as error:
        raise TrackingError(
            f"The MLflow tracking server at {mask_urls(uri)} refused the request: "
            f"{error.message[:300]}. Check MLFLOW_TRACKING_URI and, with authentication, "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.",
            status=_status(error),
        ) from error
    except Exception as error:
        raise TrackingError(
            f"Cannot reach the MLflow tracking server at {mask_urls(uri)} "
            f"({type(error).__name__}). Start it, or set MLFLOW_TRACKING_URI to a "
            "reachable server (unset, MLflow uses sqlite:///mlflow.db in this directory)."
        ) from error


_PROBE_FILTER = "name = 'rllib-mlflow-access-probe'"


def check_write_access(
    mlflow_client: RegistryClient, resource: str, write: Callable[[], Any]
) -> None:
    """Run `write`, a harmless write that needs the permission logging to `resource` needs,
    so that a user who may only read is told before training rather than after it."""
    try:
        write()
    except client_errors(mlflow_client) as error:
        user = env.MLFLOW_TRACKING_USERNAME.value()
        raise TrackingError(
            f"The MLflow tracking server at {mask_urls(mlflow_client.tracking_uri)} does not let "
            f"{f'user {user!r}' if user else 'this client'} write to {resource} "
            f"({error.message[:200]}). Ask its owner or an admin for EDIT permission on it, "
            "or log to another experiment / registered model name.",
            status=_status(error),
        ) from error


@overload
def registry_writer(mlflow_client: MlflowClient) -> ModelRegistryClient: ...
@overload
def registry_writer(mlflow_client: RegistryClient) -> RegistryClient: ...


def registry_writer(mlflow_client: RegistryClient) -> RegistryClient | ModelRegistryClient:
    """What to call the registry's writes on (aliases, version tags and descriptions,
    registered model tags, deleting versions): our RestClient as it is, MLflow's client
    without its per-call prompt check, which costs a read of every version (see
    `internals._registry_client`). The signatures are MlflowClient's."""
    if isinstance(mlflow_client, RestClient):
        return mlflow_client
    from rllib_mlflow.mlflow.internals import _registry_client

    return _registry_client(cast("MlflowClient", mlflow_client))


def registered_model_exists(mlflow_client: RegistryClient, name: str) -> bool:
    return registered_model(mlflow_client, name) is not None


def registered_model(mlflow_client: RegistryReader, name: str) -> RegisteredModelInfo | None:
    """The registered model `name`, None if there is none. (On MLflow's SQL store this
    reads every version of it: not for a registration's path.)"""
    try:
        return mlflow_client.get_registered_model(name)
    except client_errors(mlflow_client) as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def client_errors(mlflow_client: RegistryReader) -> tuple[type[ClientError], ...]:
    """What a client raises when the server answers with an error (missing, refused...)."""
    if isinstance(mlflow_client, (RestClient, SqlReader)):
        return (RestApiError, RestPermissionError)
    from mlflow.exceptions import MlflowException

    return (MlflowException,)


def _status(error: ClientError) -> int | None:
    if isinstance(error, (RestApiError, RestPermissionError)):
        return error.status
    return error.get_http_status_code()


def _probe_http_server(uri: str, timeout: float = 5.0) -> None:
    """One quick request to an HTTP(S) tracking server: MLflow's own client retries a dead
    server for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES, with backoff) before failing."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)  # any answer will do
    except requests.RequestException as error:
        raise TrackingError(
            f"Cannot reach the MLflow tracking server at {mask_urls(uri)} "
            f"({type(error).__name__} within {timeout:g} s). Start it, or set "
            "MLFLOW_TRACKING_URI to a reachable server (unset, MLflow uses "
            "sqlite:///mlflow.db in this directory)."
        ) from error
