"""Log a checkpoint to MLflow: export it, log a LoggedModel per module at the checkpoint's
training iteration, register a version, tag it and move the aliases."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rllib_mlflow import names
from rllib_mlflow.export import FORMATS, check_supported, export_snapshot
from rllib_mlflow.locks import host_lock
from rllib_mlflow.mlflow.client import check_tracking_server, client
from rllib_mlflow.mlflow.versions import (
    find_versions,
    set_iteration_alias,
    update_best_alias,
    version_tags,
)
from rllib_mlflow.redaction import get_logger, mask_urls, redact
from rllib_mlflow.rllib.checkpoint import checkpoint_uri as source_uri
from rllib_mlflow.rllib.checkpoint import read_snapshots
from rllib_mlflow.rllib.snapshot import PolicySnapshot
from rllib_mlflow.validation import validate_registered_model_name, validate_tags

logger = get_logger(__name__)

DEFAULT_BEST_METRIC = "episode_return_mean"
# Metric names as Tune flattens RLlib results, and the short names tags use.
TAGGED_METRICS = {
    "env_runners/episode_return_mean": "episode_return_mean",
    "env_runners/num_env_steps_sampled_lifetime": "num_env_steps_sampled_lifetime",
    "num_env_steps_sampled_lifetime": "num_env_steps_sampled_lifetime",
    "episode_return_mean": "episode_return_mean",
    "evaluation/env_runners/episode_return_mean": "evaluation_episode_return_mean",
}


@dataclass(frozen=True)
class RegistrationSettings:
    """What to register and how to pick `best`: checked once, before any export work."""

    registered_model_name: str
    best_metric: str = DEFAULT_BEST_METRIC
    best_mode: str = "max"
    formats: tuple[str, ...] = FORMATS
    log_rllib_checkpoint: bool = False
    video: bool = False  # record a replay of one seeded episode with each version

    def __post_init__(self) -> None:
        validate_registered_model_name(self.registered_model_name)
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', not {self.best_mode!r}.")


def log_checkpoint(
    checkpoint,
    registered_model_name: str,
    *,
    training_iteration: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    formats: tuple[str, ...] | list[str] = FORMATS,
    module_id: str | None = None,
    trial_id: str | None = None,
    trial_name: str | None = None,
    best_metric: str = DEFAULT_BEST_METRIC,
    best_mode: str = "max",
    log_rllib_checkpoint: bool = False,
    verify: bool = True,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    checkpoint_uri: str | None = None,
    metrics_logged: bool = False,
    video: bool = False,
) -> list:
    """Export an RLlib checkpoint, log it to MLflow and register one version per module.

    Args:
        checkpoint: checkpoint directory, URI (s3://...) or ``ray.tune.Checkpoint``.
        registered_model_name: the registered model. A multi-module checkpoint registers
            each module as ``<name>-<module_id>``.
        training_iteration: the LoggedModel's step; default: read from the checkpoint.
        metrics: the iteration's results (nested or flattened with '/'); numeric values
            are logged at the step and linked to the LoggedModel.
        run_id: the run to log into; default: the active run, else a new run.
        tags: extra version tags.
        formats: export formats (see `export_checkpoint`).
        trial_id, trial_name: recorded as version tags; one version per trial, iteration
            and module, so logging the same checkpoint twice returns the first version.
        best_metric, best_mode: the `best` alias moves to a version that improves on it.
        log_rllib_checkpoint: also upload the RLlib checkpoint as run artifacts, so that
            `download_checkpoint` does not depend on the original storage.
        checkpoint_uri: where the checkpoint lives, to record when ``checkpoint`` is a
            local copy of it (default: ``checkpoint`` itself).
        metrics_logged: the metrics are already in the run at this step (Tune callback).
        tracking_uri, registry_uri: default MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI
            (else the tracking store).
        video: record one seeded episode from the env's rgb_array render (no Ray) as
            replay.gif with the LoggedModel, shown on the version's card.

    Returns:
        The registered ``ModelVersion`` of each module.
    """
    settings = RegistrationSettings(
        registered_model_name,
        best_metric,
        best_mode,
        tuple(formats),
        log_rllib_checkpoint,
        video,
    )
    extra_tags = validate_tags(redact(dict(tags or {})))  # before any export or server call
    mlflow_client = client(tracking_uri, registry_uri)
    check_tracking_server(mlflow_client)
    flat_metrics = flatten_metrics(metrics or {})
    # Model.log goes through MLflow's fluent API, which knows only the global URI.
    with _fluent_tracking_uri(tracking_uri):
        run_id, created_run = _resolve_run(mlflow_client, run_id)
        try:
            snapshots = read_snapshots(checkpoint, module_id)
            # RLLIB_MLFLOW_TMPDIR: where exports are written before upload (default TMPDIR).
            scratch = os.environ.get("RLLIB_MLFLOW_TMPDIR") or None
            with tempfile.TemporaryDirectory(prefix="rllib_mlflow_export_", dir=scratch) as workdir:
                return [
                    _log_and_register(
                        mlflow_client,
                        snapshot,
                        settings,
                        model_name=_model_name(registered_model_name, snapshot, len(snapshots)),
                        run_id=run_id,
                        training_iteration=_iteration(training_iteration, snapshot),
                        metrics=flat_metrics or flatten_metrics(snapshot.metrics),
                        metrics_logged=metrics_logged,
                        trial=(trial_id, trial_name),
                        checkpoint=checkpoint,
                        source_uri=checkpoint_uri or source_uri(checkpoint),
                        extra_tags=extra_tags,
                        export_dir=Path(workdir, snapshot.module_id),
                        verify=verify,
                    )
                    for snapshot in snapshots
                ]
        finally:
            if created_run:
                mlflow_client.set_terminated(run_id)


@contextmanager
def _fluent_tracking_uri(tracking_uri: str | None) -> Iterator[None]:
    """Point MLflow's fluent API at `tracking_uri` meanwhile, so that the run, the
    LoggedModel and the version all land on the server the caller asked for."""
    if tracking_uri is None:
        yield
        return
    from rllib_mlflow.mlflow.internals import _use_tracking_uri

    with _use_tracking_uri(tracking_uri):
        yield


def flatten_metrics(
    results: Mapping[str, Any], prefix: str = "", *, finite_only: bool = True
) -> dict[str, float]:
    """Numeric leaves of a (nested) result dict, keyed 'a/b/c' as Tune flattens them.

    With `finite_only=False`, every leaf `float()` accepts, as Ray's MLflow callback logs
    them: booleans as 0/1, NaN and infinities, numeric strings."""
    import math

    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}/", finite_only=finite_only))
            continue
        if finite_only and (isinstance(value, bool | str) or not hasattr(value, "__float__")):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number) or not finite_only:
            flat[name] = number
    return flat


def _log_and_register(
    mlflow_client,
    snapshot: PolicySnapshot,
    settings: RegistrationSettings,
    *,
    model_name: str,
    run_id: str,
    training_iteration: int,
    metrics: dict[str, float],
    metrics_logged: bool,
    trial: tuple[str | None, str | None],
    checkpoint,
    source_uri: str,
    extra_tags: dict[str, Any],
    export_dir: Path,
    verify: bool,
):
    """Register one module's checkpoint unless this trial's iteration already is."""
    from rllib_mlflow.mlflow import card

    trial_id = trial[0]
    key = (model_name, trial_id, training_iteration, snapshot.module_id)
    with host_lock(mlflow_client.tracking_uri, *key):
        existing = _versions_of_key(mlflow_client, *key)
        if existing:
            logger.info(
                "%s iteration %s is already version %s",
                model_name,
                training_iteration,
                existing[0].version,
            )
            return existing[0]
        check_supported(snapshot, settings.formats)
        policy = export_snapshot(snapshot, export_dir, settings.formats, verify)
        if not metrics_logged and metrics:
            _log_metrics(mlflow_client, run_id, metrics, training_iteration)
        version = _log_version(
            mlflow_client,
            policy,
            settings,
            model_name=model_name,
            run_id=run_id,
            training_iteration=training_iteration,
            tags=_version_tags(
                policy,
                settings,
                metrics,
                training_iteration,
                trial,
                mask_urls(source_uri),
                _upload_checkpoint(mlflow_client, run_id, checkpoint, training_iteration)
                if settings.log_rllib_checkpoint
                else None,
            )
            | extra_tags,
            trial_name=trial[1],
        )
        first = _first_of_key(mlflow_client, version, *key)
        if first is not version:
            return first
    set_iteration_alias(mlflow_client, model_name, version)
    with host_lock(mlflow_client.tracking_uri, model_name, "best"):
        best = update_best_alias(
            mlflow_client, model_name, settings.best_metric, settings.best_mode
        )
    logger.info(
        "Registered %s version %s (iteration %s%s)",
        model_name,
        version.version,
        training_iteration,
        ", now @best" if best == str(version.version) else "",
    )
    card.publish_new_version(mlflow_client, model_name, version, policy, video=settings.video)
    return version


def _log_version(
    mlflow_client,
    policy,
    settings,
    *,
    model_name: str,
    run_id: str,
    training_iteration: int,
    tags: dict[str, str],
    trial_name: str | None,
):
    """Log the export as a LoggedModel and register it; on failure, leave neither the
    LoggedModel nor a registered model created for it behind."""
    from rllib_mlflow.mlflow import flavor

    info = flavor.log_model(
        policy.path,
        name=_logged_model_name(training_iteration, policy.module_id, trial_name),
        step=training_iteration,
        run_id=run_id,
        tags={"module_id": policy.module_id, "training_iteration": training_iteration},
    )
    created_model = False
    try:
        created_model = _ensure_registered_model(mlflow_client, model_name)
        return mlflow_client.create_model_version(
            name=model_name, source=info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id
        )
    except Exception:
        _discard(mlflow_client, info.model_id, model_name if created_model else None)
        raise


def _versions_of_key(mlflow_client, name, trial_id, training_iteration, module_id) -> list:
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


def _first_of_key(mlflow_client, version, name, trial_id, training_iteration, module_id):
    """The registry-side rule that keeps one version per key across hosts: after creating,
    the lowest version number of the key wins and any other deletes itself."""
    same = _versions_of_key(mlflow_client, name, trial_id, training_iteration, module_id)
    first = same[0] if same and int(same[0].version) < int(version.version) else version
    if first is not version:
        logger.info(
            "%s iteration %s was registered concurrently as version %s; dropping version %s",
            name,
            training_iteration,
            first.version,
            version.version,
        )
        mlflow_client.delete_model_version(name, version.version)
        _discard(mlflow_client, logged_model_id(version), None)
    return first


def logged_model_id(version) -> str | None:
    """The LoggedModel behind a version (older servers leave `model_id` empty)."""
    source = str(getattr(version, "source", "") or "")
    return getattr(version, "model_id", None) or source.removeprefix("models:/") or None


def _discard(mlflow_client, model_id: str | None, empty_model: str | None) -> None:
    """Best effort: delete a LoggedModel no version points to, and a registered model that
    was created for a version that never came to be."""
    try:
        if model_id:
            mlflow_client.delete_logged_model(model_id)
        if empty_model and not find_versions(mlflow_client, empty_model):
            mlflow_client.delete_registered_model(empty_model)
    except Exception as error:
        logger.warning("rllib-mlflow: could not clean up after a failed registration: %s", error)


def _version_tags(policy, settings, metrics, training_iteration, trial, source, artifact):
    from rllib_mlflow import __version__

    meta = policy.policy
    versions = meta["versions"]
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
        ray_version=versions.get("ray"),
        mlflow_version=versions.get("mlflow"),
        rllib_mlflow_version=__version__,
        best_metric=settings.best_metric,
        best_mode=settings.best_mode,
    )
    for source, short in TAGGED_METRICS.items():
        if source in metrics:
            tags[short] = f"{metrics[source]:.6g}"
    best_value = _metric(metrics, settings.best_metric)
    if best_value is not None:
        tags[f"metric.{settings.best_metric}"] = repr(best_value)
    return tags


def _metric(metrics: dict[str, float], name: str) -> float | None:
    """A metric by full name ('env_runners/episode_return_mean') or by its last part."""
    if name in metrics:
        return metrics[name]
    matches = [v for k, v in metrics.items() if k.rsplit("/", 1)[-1] == name]
    return matches[0] if len(matches) == 1 else None


def _log_metrics(mlflow_client, run_id: str, metrics: dict[str, float], step: int) -> None:
    import time

    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    batch = [Metric(metric_key(k), v, timestamp, step) for k, v in metrics.items()]
    for start in range(0, len(batch), 1000):  # MLflow's log_batch limit
        mlflow_client.log_batch(run_id, metrics=batch[start : start + 1000])


def metric_key(key: str) -> str:
    """A result key as an MLflow metric name: unsupported characters become '_'."""
    return re.sub(r"[^\w\-. /]", "_", mask_urls(key))[:250]


def result_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of a Tune/RLlib result as Ray's MLflow callback logs them, flattened and
    named for MLflow; the config goes to params only."""
    metrics = {k: v for k, v in result.items() if k not in ("config", "hist_stats")}
    return {metric_key(k): v for k, v in flatten_metrics(metrics, finite_only=False).items()}


def _upload_checkpoint(mlflow_client, run_id: str, checkpoint, training_iteration: int) -> str:
    from rllib_mlflow.rllib.checkpoint import local_checkpoint_dir

    path = f"rllib_checkpoints/checkpoint_{training_iteration:06d}"
    mlflow_client.log_artifacts(run_id, local_checkpoint_dir(checkpoint), artifact_path=path)
    return f"runs:/{run_id}/{path}"


def _ensure_registered_model(mlflow_client, name: str) -> bool:
    """Create registered model `name` unless it exists; True when this call created it."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
        return False
    except MlflowException:
        try:
            mlflow_client.create_registered_model(
                name, description="RLlib policy checkpoints registered by rllib-mlflow."
            )
            return True
        except MlflowException:
            mlflow_client.get_registered_model(name)  # created concurrently: fine
            return False


def _resolve_run(mlflow_client, run_id: str | None) -> tuple[str, bool]:
    import mlflow

    from rllib_mlflow.mlflow.internals import _get_experiment_id

    if run_id:
        return run_id, False
    active = mlflow.active_run()
    if active is not None:
        return active.info.run_id, False
    experiment_id = _get_experiment_id() or "0"
    run = mlflow_client.create_run(experiment_id, tags={"mlflow.source.name": "rllib-mlflow"})
    return run.info.run_id, True


def _model_name(base: str, snapshot: PolicySnapshot, module_count: int) -> str:
    return base if module_count == 1 else f"{base}-{snapshot.module_id}"


def _iteration(explicit: int | None, snapshot: PolicySnapshot) -> int:
    if explicit is not None:
        return int(explicit)
    return int(snapshot.training_iteration or 0)


def _logged_model_name(iteration: int, module_id: str, trial_name: str | None) -> str:
    parts = [trial_name, f"iter-{iteration}", None if module_id == "default_policy" else module_id]
    # MLflow refuses '/', ':', '.', '%' and quotes in LoggedModel names.
    return re.sub(r"[/:.%\"'\s]", "_", "-".join(p for p in parts if p))
