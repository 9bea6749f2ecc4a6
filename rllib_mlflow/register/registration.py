"""Log a checkpoint to MLflow: export it, log a LoggedModel per module at the checkpoint's
training iteration, register a version, tag it and move `best`; then apply the retention.

The orchestration of `register/`, in one module: `log_checkpoint` (a user's call) and
`register_task` (the worker's and `sync`'s) both carry out a `RegistrationTask`, the data
of `task.py`, with its settings' retries and retention.

Nothing here lists the registered model's versions or aliases: a registration costs the
same at the 10,000th version as at the 10th (see `mlflow.versions` and `mlflow.family`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rllib_mlflow import names
from rllib_mlflow.export import FORMATS, check_supported, export_snapshot
from rllib_mlflow.export.agreement import DEFAULT_MIN_AGREEMENT
from rllib_mlflow.locks import host_lock
from rllib_mlflow.mlflow import family, runs
from rllib_mlflow.mlflow.client import check_tracking_server, client
from rllib_mlflow.mlflow.versions import update_best_alias
from rllib_mlflow.redaction import get_logger, mask_urls, redact
from rllib_mlflow.register import model_version
from rllib_mlflow.register.metrics import DEFAULT_BEST_METRIC, flatten_metrics, metric_key
from rllib_mlflow.register.task import RegistrationSettings, RegistrationTask, resolve_settings
from rllib_mlflow.retries import with_retries
from rllib_mlflow.rllib.env_record import with_creator
from rllib_mlflow.rllib.reader import read_snapshots
from rllib_mlflow.rllib.snapshot import PolicySnapshot
from rllib_mlflow.rllib.uris import CheckpointLike
from rllib_mlflow.rllib.uris import checkpoint_uri as source_uri
from rllib_mlflow.scratch import export_scratch
from rllib_mlflow.validation import validate_tags

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

logger = get_logger(__name__)


def log_checkpoint(
    checkpoint: CheckpointLike,
    registered_model_name: str | None = None,
    *,
    settings: RegistrationSettings | None = None,
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
    min_int8_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> list[ModelVersion]:
    """Export an RLlib checkpoint, log it to MLflow and register one version per module.

    Args:
        checkpoint: checkpoint directory, URI (s3://...) or ``ray.tune.Checkpoint``.
        registered_model_name: the registered model each module's version joins
            (``NAME-<module_id>`` for several modules). It and ``formats``,
            ``best_metric``, ``best_mode``, ``log_rllib_checkpoint``, ``verify``, ``video``
            and ``min_int8_agreement`` are the settings documented on
            `RegistrationSettings`.
        settings: all the settings at once instead of those keywords; then its ``retries``
            and retention apply too (with the keywords, a failure is reported at once).
        training_iteration: the LoggedModel's step; default: read from the checkpoint.
        metrics: the iteration's results (nested or flattened with '/'); numeric values
            are logged at the step and linked to the LoggedModel.
        run_id: the run to log into; default: the active run, else a new run.
        tags: extra version tags.
        module_id: one module of a multi-module checkpoint; default: every module.
        trial_id: recorded as a version tag, as ``trial_name``; one version per trial,
            iteration and module, so logging the same checkpoint twice returns the first
            version.
        trial_name: Tune's trial name, recorded as a version tag.
        checkpoint_uri: where the checkpoint lives, to record when ``checkpoint`` is a
            local copy of it (default: ``checkpoint`` itself).
        metrics_logged: the metrics are already in the run at this step (Tune callback).
        tracking_uri: default MLFLOW_TRACKING_URI.
        registry_uri: default MLFLOW_REGISTRY_URI, else the tracking store.

    Returns:
        The registered ``ModelVersion`` of each module.
    """
    chosen = resolve_settings(
        settings,
        registered_model_name,
        formats=tuple(formats),
        best_metric=best_metric,
        best_mode=best_mode,
        log_rllib_checkpoint=log_rllib_checkpoint,
        verify=verify,
        video=video,
        min_int8_agreement=min_int8_agreement,
    )
    if settings is None:  # a direct call has always reported a failure at once
        chosen = dataclasses.replace(chosen, retries=0)
    task = RegistrationTask(
        settings=chosen,
        checkpoint=str(checkpoint),
        checkpoint_uri=checkpoint_uri or source_uri(checkpoint),
        training_iteration=training_iteration,
        metrics=dict(metrics or {}),
        trial_id=trial_id,
        trial_name=trial_name,
        run_id=run_id,
        metrics_logged=metrics_logged,
        module_id=module_id,
        tags=validate_tags(redact(dict(tags or {}))),  # before any export or server call
    )
    return _register_with_retries(task, tracking_uri, registry_uri, source=checkpoint)


def register_task(
    task: RegistrationTask, tracking_uri: str | None = None, registry_uri: str | None = None
) -> list[dict[str, str]]:
    """Carry out one task of the worker or `sync`, retrying transient failures, then apply
    the retention policy; returns the versions as `{"name", "version"}`."""
    versions = _register_with_retries(task, tracking_uri, registry_uri)
    return [{"name": v.name, "version": str(v.version)} for v in versions]


def _register_with_retries(
    task: RegistrationTask,
    tracking_uri: str | None,
    registry_uri: str | None,
    source: CheckpointLike | None = None,
) -> list[ModelVersion]:
    settings = task.settings
    versions = with_retries(
        lambda: _register_once(
            task, tracking_uri=tracking_uri, registry_uri=registry_uri, source=source
        ),
        attempts=settings.retries + 1,
    )
    if settings.keep_last is not None or settings.keep_best is not None:
        from rllib_mlflow.mlflow.retention import prune

        mlflow_client = client(tracking_uri, registry_uri)
        for name in sorted({v.name for v in versions}):
            prune(mlflow_client, name, settings.keep_last, settings.keep_best)
    return versions


def _register_once(
    task: RegistrationTask,
    *,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    source: CheckpointLike | None = None,
) -> list[ModelVersion]:
    """Carry out `task` once (see `log_checkpoint`); `source` is the checkpoint to read when
    it is more than a path (a ``ray.tune.Checkpoint``), else ``task.checkpoint`` is read."""
    source = task.checkpoint if source is None else source
    mlflow_client = client(tracking_uri, registry_uri)
    check_tracking_server(mlflow_client)
    # Model.log goes through MLflow's fluent API, which knows only the global URI.
    with _fluent_tracking_uri(tracking_uri):
        run_id, created_run = _resolve_run(mlflow_client, task.run_id)
        try:
            snapshots = read_snapshots(source, task.module_id)
            with export_scratch() as workdir:  # in RLLIB_MLFLOW_TMPDIR (default TMPDIR)
                return [
                    _log_and_register(
                        mlflow_client,
                        snapshot,
                        task,
                        run_id=run_id,
                        model_name=_model_name(task, snapshot, len(snapshots)),
                        source=source,
                        export_dir=Path(workdir, snapshot.module_id),
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


def _log_and_register(
    mlflow_client: MlflowClient,
    snapshot: PolicySnapshot,
    task: RegistrationTask,
    *,
    run_id: str,
    model_name: str,
    source: CheckpointLike,
    export_dir: Path,
) -> ModelVersion:
    """Register one module's checkpoint unless this trial's iteration already is."""
    from rllib_mlflow.mlflow import card
    from rllib_mlflow.play import replay

    settings = task.settings
    iteration = _iteration(task.training_iteration, snapshot)
    metrics = flatten_metrics(task.metrics) or flatten_metrics(snapshot.metrics)
    key = (model_name, task.trial_id, iteration, snapshot.module_id)
    with host_lock(mlflow_client.tracking_uri, *key):
        existing = model_version.versions_of_key(mlflow_client, *key)
        if existing:
            logger.info(
                "%s iteration %s is already version %s", model_name, iteration, existing[0].version
            )
            return _complete(mlflow_client, existing[0], metrics, settings)
        check_supported(snapshot, settings.formats)
        snapshot = dataclasses.replace(snapshot, env=with_creator(snapshot.env, task.env_make))
        policy = export_snapshot(
            snapshot,
            export_dir,
            settings.formats,
            settings.verify,
            min_int8_agreement=settings.min_int8_agreement,
        )
        if not task.metrics_logged and metrics:
            runs.log_metrics(
                mlflow_client,
                run_id,
                {metric_key(k): v for k, v in metrics.items()},
                iteration,
            )
        artifact = (
            _upload_checkpoint(mlflow_client, run_id, source, iteration)
            if settings.log_rllib_checkpoint
            else None
        )
        tags = model_version.policy_version_tags(
            policy,
            settings,
            metrics,
            iteration,
            (task.trial_id, task.trial_name),
            mask_urls(task.checkpoint_uri),
            artifact,
        )
        tags[names.VERSION_TAG_FAMILY] = family.so_far(mlflow_client, model_name).to_json()
        version = model_version.log_version(
            mlflow_client,
            policy,
            model_name=model_name,
            run_id=run_id,
            training_iteration=iteration,
            tags=tags | task.tags,
            trial_name=task.trial_name,
        )
        first = model_version.first_of_key(mlflow_client, version, *key)
        if first is not version:
            return first
    with host_lock(mlflow_client.tracking_uri, model_name, "best"):
        best = update_best_alias(
            mlflow_client, model_name, version, settings.best_metric, settings.best_mode
        )
    logger.info(
        "Registered %s version %s (iteration %s%s)",
        model_name,
        version.version,
        iteration,
        ", now @best" if best == str(version.version) else "",
    )
    if settings.video:
        replay.record_and_attach(mlflow_client, model_name, version.version, policy.path)
    card.publish_new_version(mlflow_client, model_name, version, policy, best=best)
    return version


def _complete(
    mlflow_client: MlflowClient,
    version: ModelVersion,
    metrics: dict[str, float],
    settings: RegistrationSettings,
) -> ModelVersion:
    """An existing version, given the metric tags it lacks, and ``best`` if they earn it
    (under the key's lock: nothing takes the two locks the other way round)."""
    if not model_version.add_missing_metric_tags(
        mlflow_client, version, metrics, settings.best_metric
    ):
        return version
    version = mlflow_client.get_model_version(version.name, str(version.version))
    logger.info("Version %s of %s now has its metrics", version.version, version.name)
    with host_lock(mlflow_client.tracking_uri, version.name, "best"):
        update_best_alias(
            mlflow_client, version.name, version, settings.best_metric, settings.best_mode
        )
    return version


def _upload_checkpoint(
    mlflow_client: MlflowClient, run_id: str, checkpoint: CheckpointLike, training_iteration: int
) -> str:
    from rllib_mlflow.rllib.uris import local_checkpoint_dir

    path = f"rllib_checkpoints/checkpoint_{training_iteration:06d}"
    mlflow_client.log_artifacts(run_id, local_checkpoint_dir(checkpoint), artifact_path=path)
    return f"runs:/{run_id}/{path}"


def _resolve_run(mlflow_client: MlflowClient, run_id: str | None) -> tuple[str, bool]:
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


def _model_name(task: RegistrationTask, snapshot: PolicySnapshot, module_count: int) -> str:
    base = task.settings.registered_model_name
    return base if module_count == 1 else f"{base}-{snapshot.module_id}"


def _iteration(explicit: int | None, snapshot: PolicySnapshot) -> int:
    if explicit is not None:
        return int(explicit)
    return int(snapshot.training_iteration or 0)
