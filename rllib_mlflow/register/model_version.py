"""One version per trial, training iteration and module: log the export as a LoggedModel,
register it with its tags, and keep the key's first version when two hosts race."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from rllib_mlflow import names
from rllib_mlflow.mlflow.client import registered_model_exists, registry_writer
from rllib_mlflow.mlflow.registry_client import RegistryClient
from rllib_mlflow.mlflow.versions import find_versions, logged_model_id, version_tags
from rllib_mlflow.redaction import get_logger
from rllib_mlflow.register.metrics import TAGGED_METRICS, find_metric
from rllib_mlflow.register.task import RegistrationSettings
from rllib_mlflow.validation import MAX_TAG_VALUE_LENGTH

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = get_logger(__name__)


def log_version(
    mlflow_client: MlflowClient,
    policy,
    *,
    model_name: str,
    run_id: str,
    training_iteration: int,
    tags: dict[str, str],
    trial_name: str | None,
):
    """Log the export `policy` as a LoggedModel and register it; on failure, leave neither
    the LoggedModel nor a registered model created for it behind."""
    from mlflow.exceptions import MlflowException

    from rllib_mlflow.mlflow import flavor

    info = flavor.log_model(
        policy.path,
        name=_logged_model_name(training_iteration, policy.module_id, trial_name),
        step=training_iteration,
        run_id=run_id,
        tags={"module_id": policy.module_id, "training_iteration": training_iteration},
    )
    created_model = False

    def create():
        return mlflow_client.create_model_version(
            name=model_name, source=info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id
        )

    try:
        try:
            return create()
        except MlflowException as error:  # the first version of a new model
            # A file store says so with a generic error ("Model Version creation error");
            # asking then costs one read, on this failure path only.
            missing = error.error_code == "RESOURCE_DOES_NOT_EXIST"
            if not missing and registered_model_exists(mlflow_client, model_name):
                raise
        created_model = _create_registered_model(mlflow_client, model_name)
        return create()
    except Exception:
        _discard(mlflow_client, info.model_id, model_name if created_model else None)
        raise


def versions_of_key(
    mlflow_client: RegistryClient, name, trial_id, training_iteration, module_id
) -> list:
    """The versions registered for one trial, iteration and module, oldest first."""
    found = find_versions(
        mlflow_client,
        name,
        training_iteration=training_iteration,
        trial=trial_id,
        module_id=module_id,
    )
    same = [v for v in found if v.tags.get(names.VERSION_TAG_TRIAL_ID) == (trial_id or None)]
    return sorted(same, key=lambda v: int(v.version))


def first_of_key(
    mlflow_client: MlflowClient,  # a registration's, never the REST fast path
    version,
    name: str,
    trial_id: str | None,
    training_iteration: int,
    module_id: str,
):
    """The registry-side rule that keeps one version per key across hosts: after creating,
    the lowest version number of the key wins and any other deletes itself."""
    same = versions_of_key(mlflow_client, name, trial_id, training_iteration, module_id)
    first = same[0] if same and int(same[0].version) < int(version.version) else version
    if first is not version:
        logger.info(
            "%s iteration %s was registered concurrently as version %s; dropping version %s",
            name,
            training_iteration,
            first.version,
            version.version,
        )
        registry_writer(mlflow_client).delete_model_version(name, version.version)
        _discard(mlflow_client, logged_model_id(version), None)
    return first


def policy_version_tags(
    policy,
    settings: RegistrationSettings,
    metrics: dict[str, float],
    training_iteration: int,
    trial: tuple[str | None, str | None],
    source: str,
    artifact: str | None,
) -> dict[str, str]:
    """What a version says about itself: its checkpoint, export, parity and metrics."""
    from rllib_mlflow._version import __version__

    meta = policy.metadata
    versions = meta["library_versions"]
    tags = version_tags(
        training_iteration=training_iteration,
        module_id=policy.module_id,
        trial_id=trial[0],
        trial_name=trial[1],
        algorithm=meta["algorithm"],
        env_id=meta["env_id"],
        checkpoint_uri=source,
        rllib_checkpoint_artifact=artifact,
        formats=",".join(policy.formats),
        # Requested formats that could not be made, with why ("h5: ..."), as in policy.json.
        formats_refused="; ".join(f"{f}: {why}" for f, why in policy.refused.items())[:4000],
        parity_max_abs_diff=None
        if policy.parity is None
        else f"{policy.parity['max_abs_diff']:.3g}",
        int8_agreement=_int8_agreement(policy.metadata),
        ray_version=versions.get("ray"),
        mlflow_version=versions.get("mlflow"),
        rllib_mlflow_version=__version__,
        best_metric=settings.best_metric,
        best_mode=settings.best_mode,
    )
    return tags | env_tags(meta.get("env")) | metric_tags(metrics, settings.best_metric)


def env_tags(env: dict[str, Any] | None) -> dict[str, str]:
    """How to make the version's env again (policy.json's `env`), for `evaluate` to read
    without downloading policy.json."""
    if not env or not env.get("make"):
        return {}
    config = json.dumps(env.get("config") or {}, sort_keys=True, separators=(",", ":"))
    tags = {names.VERSION_TAG_ENV_MAKE: str(env["make"])}
    if len(config) <= MAX_TAG_VALUE_LENGTH:  # beyond, policy.json alone holds it
        tags[names.VERSION_TAG_ENV_CONFIG] = config
    if env.get("agent_to_module") and len(env.get("modules") or ()) > 1:  # one: no choice
        tags[names.VERSION_TAG_ENV_AGENT_TO_MODULE] = json.dumps(env["agent_to_module"])
    return tags


def metric_tags(metrics: dict[str, float], best_metric: str) -> dict[str, str]:
    """The version tags of a checkpoint's metrics: the usual ones by short name, and the
    value of `best_metric` that the ``best`` alias compares."""
    tags = {
        short: f"{metrics[name]:.6g}" for name, short in TAGGED_METRICS.items() if name in metrics
    }
    best_value = find_metric(metrics, best_metric)
    if best_value is not None:
        tags[names.metric_tag(best_metric)] = repr(best_value)
    return tags


def add_missing_metric_tags(
    mlflow_client: RegistryClient, version, metrics: dict[str, float], best_metric: str
) -> bool:
    """Tag `version` with the metric tags it lacks; whether it lacked any. A `sync` beside a
    live run can register a checkpoint before Tune has reported its result (its result.json
    has no line for it yet); the callback's registration of it then brings the metrics."""
    missing = {
        key: value
        for key, value in metric_tags(metrics, best_metric).items()
        if key not in version.tags
    }
    writer = registry_writer(mlflow_client)
    for key, value in missing.items():
        writer.set_model_version_tag(version.name, str(version.version), key, value)
    return bool(missing)


def _discard(mlflow_client: MlflowClient, model_id: str | None, empty_model: str | None) -> None:
    """Best effort: delete a LoggedModel no version points to, and a registered model that
    was created for a version that never came to be."""
    try:
        if model_id:
            mlflow_client.delete_logged_model(model_id)
        if empty_model and not find_versions(mlflow_client, empty_model):
            mlflow_client.delete_registered_model(empty_model)
    except Exception as error:
        logger.warning("rllib-mlflow: could not clean up after a failed registration: %s", error)


def _create_registered_model(mlflow_client: MlflowClient, name: str) -> bool:
    """Create registered model `name`; True when this call created it, False when another
    process did meanwhile. (Asking first would cost `get_registered_model`, which reads
    every version on MLflow's SQL store: the version is created first, and this runs only
    when the model is missing.)"""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(
            name, description="RLlib policy checkpoints registered by rllib-mlflow."
        )
        return True
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return False


def _logged_model_name(iteration: int, module_id: str, trial_name: str | None) -> str:
    parts = [trial_name, f"iter-{iteration}", None if module_id == "default_policy" else module_id]
    # MLflow refuses '/', ':', '.', '%' and quotes in LoggedModel names.
    return re.sub(r"[/:.%\"'\s]", "_", "-".join(p for p in parts if p))


def _int8_agreement(policy: dict[str, Any]) -> str | None:
    report = (policy.get("quantized", {}).get("tflite_int8") or {}).get("agreement")
    return None if not report else f"{report['agreement']:.4f}"
