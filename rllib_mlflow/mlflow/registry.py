"""The MLflow Model Registry side: names, tags, aliases, lookups and loading.

Each registered version is one checkpoint of one module of one trial, identified by the
version tags `trial_id`, `training_iteration` and `module_id`. Aliases:

- `best` points at the version with the best `best_metric` so far (default
  `episode_return_mean`, max). It only moves on strict improvement.
- `iter-N` points at the most recently registered version for training iteration N.
  When several trials feed one registered model, `iter-N` is therefore the last trial to
  reach iteration N; `find_version(name, training_iteration=N, trial=...)` picks a given
  trial's version, and without `trial` it refuses to guess and lists the trials.

This module imports neither Ray nor torch: `load_policy` runs on machines without them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from rllib_mlflow.errors import RegistryError, TrackingError
from rllib_mlflow.mlflow.rest import (
    RestApiError,
    RestClient,
    RestPermissionError,
    load_deadline_seconds,
    rest_client,
)
from rllib_mlflow.mlflow.rest import max_file_bytes as default_max_file_bytes
from rllib_mlflow.paths import check_tree, inside
from rllib_mlflow.policy.serving import (
    ONNX_FILE,
    POLICY_FILE,
    SAVED_MODEL_DIR,
    Policy,
    onnxruntime_installed,
)
from rllib_mlflow.redaction import mask_urls
from rllib_mlflow.validation import validate_registered_model_name  # noqa: F401 (API)

ALIAS_BEST = "best"
TAG_ITERATION = "training_iteration"
TAG_TRIAL_ID = "trial_id"
TAG_TRIAL_NAME = "trial_name"
TAG_MODULE_ID = "module_id"
TAG_CHECKPOINT_URI = "checkpoint_uri"
TAG_CHECKPOINT_ARTIFACT = "rllib_checkpoint_artifact"
TAG_BEST_METRIC = "best_metric"
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+))?/?$")


def iteration_alias(training_iteration: int) -> str:
    return f"iter-{int(training_iteration)}"


def client(tracking_uri: str | None = None, registry_uri: str | None = None):
    """An MlflowClient for `tracking_uri`, else MLFLOW_TRACKING_URI, else MLflow's default;
    its registry is `registry_uri`, else MLFLOW_REGISTRY_URI, else the tracking store."""
    from mlflow import MlflowClient

    if tracking_uri is not None:
        validate_tracking_uri(tracking_uri)
    registry_uri = registry_uri or os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
    if registry_uri is not None:
        validate_tracking_uri(registry_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)


_TRACKING_URI = re.compile(
    r"(https?://[^/\s]+.*|(sqlite|postgresql|mysql|mssql)(\+\w+)?://.+|databricks(-uc)?(://.*)?|uc:.+)"
)


def validate_tracking_uri(uri: str) -> str:
    """Refuse a tracking URI MLflow cannot use, before anything is queued or exported."""
    if isinstance(uri, str) and is_file_store(uri):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
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


def check_tracking_server(mlflow_client) -> None:
    """Fail fast, with the URI, when the tracking server is unreachable or refuses us."""
    uri = mlflow_client.tracking_uri
    _probe_http_server(uri)
    try:
        mlflow_client.search_registered_models(max_results=1)
    except TrackingError:
        raise
    except _client_errors(mlflow_client) as error:
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


TAG_WRITER = "rllib_mlflow.version"


def check_write_access(mlflow_client, resource: str, write: Callable[[], Any]) -> None:
    """Run `write`, a harmless write that needs the permission logging to `resource` needs,
    so that a user who may only read is told before training rather than after it."""
    try:
        write()
    except _client_errors(mlflow_client) as error:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        raise TrackingError(
            f"The MLflow tracking server at {mask_urls(mlflow_client.tracking_uri)} does not let "
            f"{f'user {user!r}' if user else 'this client'} write to {resource} "
            f"({error.message[:200]}). Ask its owner or an admin for EDIT permission on it, "
            "or log to another experiment / registered model name.",
            status=_status(error),
        ) from error


def registered_model_exists(mlflow_client, name: str) -> bool:
    try:
        mlflow_client.get_registered_model(name)
        return True
    except _client_errors(mlflow_client) as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


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


def find_versions(
    mlflow_client,
    name: str,
    *,
    training_iteration: int | None = None,
    trial: str | None = None,
    module_id: str | None = None,
) -> list:
    """Registered versions of `name` matching the given tags, newest first."""
    filters = [f"name = '{name}'"]
    if training_iteration is not None:
        filters.append(f"tags.{TAG_ITERATION} = '{int(training_iteration)}'")
    if module_id is not None:
        filters.append(f"tags.{TAG_MODULE_ID} = '{module_id}'")
    versions = _search_all(mlflow_client, " AND ".join(filters))
    if trial is not None:
        versions = [
            v for v in versions if trial in (v.tags.get(TAG_TRIAL_ID), v.tags.get(TAG_TRIAL_NAME))
        ]
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def find_version(
    model: str,
    *,
    training_iteration: int | None = None,
    trial: str | None = None,
    tracking_uri: str | None = None,
):
    """The ModelVersion named by a models:/ URI, or by a name plus training iteration."""
    return _find_version(
        client(tracking_uri), model, training_iteration=training_iteration, trial=trial
    )


def _find_version(mlflow_client, model: str, *, training_iteration: int | None, trial: str | None):
    match = _MODEL_URI.match(model)
    name = match.group("name") if match else model
    if match and match.group("version"):
        return _get_version(mlflow_client, name, match.group("version"))
    if match and match.group("alias"):
        return _get_alias(mlflow_client, name, match.group("alias"))
    if training_iteration is None:
        raise RegistryError(
            f"Say which version of {name!r}: 'models:/{name}/<version>', "
            f"'models:/{name}@best', or training_iteration=N."
        )
    matches = find_versions(mlflow_client, name, training_iteration=training_iteration, trial=trial)
    if not matches:
        raise RegistryError(
            f"{name!r} has no version for training_iteration={training_iteration}"
            f"{f' and trial {trial!r}' if trial else ''}. Registered iterations: "
            f"{_registered_iterations(mlflow_client, name)}."
        )
    trials = {v.tags.get(TAG_TRIAL_ID) for v in matches}
    if len(trials) > 1:
        raise RegistryError(
            f"Several trials registered training_iteration={training_iteration} in {name!r}: "
            f"{sorted(t or '' for t in trials)}. Pass trial=<trial id or name>."
        )
    return matches[0]


def load_policy(
    model: str,
    *,
    training_iteration: int | None = None,
    trial: str | None = None,
    backend: str | None = None,
    tracking_uri: str | None = None,
    timeout_s: float | None = None,
    max_file_bytes: int | None = None,
):
    """Load a registered policy without Ray or torch.

    Args:
        model: ``models:/NAME/3``, ``models:/NAME@best``, ``models:/NAME@iter-20``, or a
            registered model name together with ``training_iteration``.
        training_iteration: pick the version registered for this iteration.
        trial: trial id or name, when several trials registered that iteration.
        backend: ``"onnxruntime"`` or ``"tensorflow"``; default: ONNX Runtime if installed.
        timeout_s: the whole load from an HTTP server ends within this many seconds
            (default: MLFLOW_HTTP_REQUEST_TIMEOUT, else 120).
        max_file_bytes: refuse a larger file (default: RLLIB_MLFLOW_MAX_FILE_BYTES, 2 GiB).

    Returns:
        `rllib_mlflow.policy.serving.Policy`, with ``compute_actions(obs)``,
        ``action_dist_inputs(obs)`` and ``metadata``. The downloaded files are deleted
        once the policy is in memory.
    """
    rest = rest_client(  # no `import mlflow` against an HTTP server
        tracking_uri,
        deadline_s=timeout_s or load_deadline_seconds(),
        max_file_bytes=max_file_bytes or default_max_file_bytes(),
    )
    version = _find_version(
        rest or client(tracking_uri), model, training_iteration=training_iteration, trial=trial
    )
    with tempfile.TemporaryDirectory(prefix="rllib_policy_") as local:
        export_dir = rest and _download_through_proxy(rest, version, backend, local)
        policy = _read_policy(version, backend, tracking_uri, export_dir, local)
    policy.metadata = {
        **policy.metadata,
        "registered_model": version.name,
        "version": version.version,
    }
    return policy


def _read_policy(version, backend, tracking_uri, export_dir, local) -> Policy:
    """The policy in `export_dir`, else downloaded with MLflow into `local`; a malformed
    policy.json is the model's fault, said so."""
    try:
        if export_dir:
            return Policy(export_dir, backend=backend)
        from rllib_mlflow.mlflow.flavor import load_model

        uri = f"models:/{version.name}/{version.version}"
        return load_model(uri, dst_path=local, backend=backend, tracking_uri=tracking_uri)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
        raise RegistryError(
            f"Version {version.version} of {version.name!r} is not a loadable rllib-mlflow "
            f"policy: its files are malformed ({type(error).__name__}: {str(error)[:200]}). "
            "Re-register it from its checkpoint."
        ) from error


def _download_through_proxy(rest: RestClient, version, backend: str | None, local: str):
    """The export directory of `version`, fetched into `local` through the server's
    artifact proxy with only the files `backend` needs; None when the server does not
    proxy its artifacts. Every path the server names stays inside `local`."""
    import yaml

    root = rest.proxied_artifact_path(rest.download_uri(version.name, version.version))
    if root is None:
        return None
    mlmodel = rest.download_artifact(f"{root}/MLmodel", local, "MLmodel")
    with open(mlmodel) as stream:
        flavors = _mapping(yaml.safe_load(stream)).get("flavors")
    conf = _mapping(flavors).get("rllib_mlflow")
    if not isinstance(conf, dict) or not isinstance(conf.get("data"), str):
        raise RegistryError(
            f"Version {version.version} of {version.name!r} is not an rllib-mlflow model "
            "(its MLmodel has no rllib_mlflow flavor with a data folder)."
        )
    data = conf["data"]
    export_dir = inside(local, data)
    policy_file = rest.download_artifact(
        f"{root}/{data}/{POLICY_FILE}", local, f"{data}/{POLICY_FILE}"
    )
    with open(policy_file) as stream:
        try:
            policy = json.load(stream)
        except ValueError:
            policy = None
    if not isinstance(policy, dict):
        raise RegistryError(
            f"Version {version.version} of {version.name!r} has a malformed policy.json (not "
            "a JSON object). Re-register it from its checkpoint."
        )
    formats = policy.get("formats") or []
    use_onnx = backend == "onnxruntime" or (
        backend is None and "onnx" in formats and onnxruntime_installed()
    )
    if use_onnx:
        rest.download_artifact(f"{root}/{data}/{ONNX_FILE}", local, f"{data}/{ONNX_FILE}")
    else:
        saved_model = f"{root}/{data}/{SAVED_MODEL_DIR}"
        rest.download_tree(saved_model, local, f"{data}/{SAVED_MODEL_DIR}")
    return export_dir


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def download_checkpoint(
    model: str, dst_path: str | None = None, *, tracking_uri: str | None = None
) -> str:
    """A local directory with the RLlib checkpoint a version came from.

    The result is accepted by ``Algorithm.from_checkpoint`` to resume training. The
    checkpoint is fetched from the run's artifacts when it was logged there
    (``log_rllib_checkpoint=True``), else from the recorded checkpoint URI.
    """
    version = find_version(model, tracking_uri=tracking_uri)
    dst = dst_path or tempfile.mkdtemp(prefix="rllib_checkpoint_")
    artifact = version.tags.get(TAG_CHECKPOINT_ARTIFACT)
    if artifact:
        import mlflow

        if not artifact.startswith("runs:/"):
            raise RegistryError(
                f"Version {version.version} of {version.name!r} names its checkpoint artifact "
                f"{artifact!r}, which is no runs:/ URI; refusing to download it."
            )
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact, dst_path=dst, tracking_uri=tracking_uri
        )
        check_tree(dst)
        return local
    source = version.tags.get(TAG_CHECKPOINT_URI)
    if not source:
        raise RegistryError(f"Version {version.version} of {version.name!r} records no checkpoint.")
    if "://" not in source:
        if not os.path.isdir(source):
            raise RegistryError(
                f"The checkpoint of version {version.version} of {version.name!r} was at "
                f"{source}, which no longer exists. Log checkpoints with "
                "log_rllib_checkpoint=True to keep them in MLflow."
            )
        target = inside(dst, os.path.basename(source.rstrip("/")))
        shutil.copytree(source, target)
        return target
    from ray.tune import Checkpoint  # remote storage: pyarrow through Ray, as Tune wrote it

    local = Checkpoint(source).to_directory(dst)
    check_tree(dst)
    return local


def set_iteration_alias(mlflow_client, name: str, version) -> None:
    iteration = version.tags.get(TAG_ITERATION)
    if iteration is not None:
        mlflow_client.set_registered_model_alias(
            name, iteration_alias(int(iteration)), version.version
        )


def update_best_alias(mlflow_client, name: str, metric: str, mode: str) -> str | None:
    """Point `best` at the version with the best `metric` tag, when it strictly improves on
    the current `best`; returns the version `best` points at.

    Recomputed from the registry and re-checked after each move, so that processes (or
    hosts) registering at once cannot leave `best` on a version another one has beaten."""
    current = None
    for _ in range(5):
        candidate = _best_version(find_versions(mlflow_client, name), metric, mode)
        current = _alias_or_none(mlflow_client, name, ALIAS_BEST)
        if candidate is None or not _beats(candidate, current, metric, mode):
            break
        mlflow_client.set_registered_model_alias(name, ALIAS_BEST, candidate.version)
    return None if current is None else str(current.version)


def _best_version(versions: list, metric: str, mode: str):
    """The version with the best `metric.<metric>` tag; the oldest among equals."""
    scored = [(v, _metric_tag(v, metric)) for v in versions]
    scored = [(v, value) for v, value in scored if value is not None]
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda item: (sign * item[1], -int(item[0].version)))[0]


def _beats(candidate, current, metric: str, mode: str) -> bool:
    if current is None:
        return True
    if str(current.version) == str(candidate.version):
        return False
    best = _metric_tag(current, metric)
    return best is None or _improves(_metric_tag(candidate, metric), best, mode)


def _metric_tag(version, metric: str) -> float | None:
    try:
        return float(version.tags[f"metric.{metric}"])
    except (KeyError, TypeError, ValueError):
        return None


def _improves(value: float, best: float, mode: str) -> bool:
    return value > best if mode == "max" else value < best


def _client_errors(mlflow_client) -> tuple[type[Exception], ...]:
    """What a client raises when the server answers with an error (missing, refused...)."""
    if isinstance(mlflow_client, RestClient):
        return (RestApiError, RestPermissionError)
    from mlflow.exceptions import MlflowException

    return (MlflowException,)


def _status(error: Exception) -> int | None:
    if hasattr(error, "get_http_status_code"):
        return error.get_http_status_code()
    return getattr(error, "status", None)


def _alias_or_none(mlflow_client, name: str, alias: str):
    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except _client_errors(mlflow_client):
        return None


def _get_version(mlflow_client, name: str, version: str):
    try:
        return mlflow_client.get_model_version(name, version)
    except _client_errors(mlflow_client) as error:
        raise RegistryError(
            f"{name!r} has no version {version}. Existing versions: "
            f"{_existing_versions(mlflow_client, name)}."
        ) from error


def _get_alias(mlflow_client, name: str, alias: str):
    version = _alias_or_none(mlflow_client, name, alias)
    if version is None:
        aliases = _existing_aliases(mlflow_client, name)
        raise RegistryError(f"{name!r} has no alias {alias!r}. Existing aliases: {aliases}.")
    return version


def _search_all(mlflow_client, filter_string: str) -> list:
    versions, token = [], None
    while True:
        page = mlflow_client.search_model_versions(
            filter_string, max_results=1000, page_token=token
        )
        versions.extend(page)
        token = page.token
        if not token:
            return versions


def _existing_versions(mlflow_client, name: str) -> list[int]:
    try:
        return sorted(int(v.version) for v in _search_all(mlflow_client, f"name = '{name}'"))
    except Exception:
        return []


def _existing_aliases(mlflow_client, name: str) -> list[str]:
    try:
        return sorted(mlflow_client.get_registered_model(name).aliases)
    except Exception:
        return []


def _registered_iterations(mlflow_client, name: str) -> list[int]:
    versions = _search_all(mlflow_client, f"name = '{name}'")
    return sorted({int(v.tags[TAG_ITERATION]) for v in versions if TAG_ITERATION in v.tags})


def version_tags(**tags: Any) -> dict[str, str]:
    """Version tags as MLflow stores them: strings, with empty values dropped."""
    return {k: str(v) for k, v in tags.items() if v is not None and v != ""}
