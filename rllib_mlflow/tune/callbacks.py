"""Ray Tune callbacks: one MLflow run per trial, and every checkpoint a registered version.

The hooks only translate Tune events into messages. `ExportDispatcher` passes them, in each trial's
order, to worker processes (`rllib_mlflow.tune.worker`) that do all the MLflow work at the
lowest CPU priority: the trials' runs, and exporting and registering checkpoints. So the
driver never imports mlflow, TensorFlow or torch, and never waits on a server. Every
checkpoint is first copied out of Tune's hands (so `num_to_keep` cannot delete it under
us; see `staging` for the bound) and written to a journal, so that nothing is lost on
Ctrl-C or a crash: `rllib-mlflow sync EXPERIMENT_DIR` finishes the job.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from typing import Any

from ray.tune.logger import LoggerCallback

from rllib_mlflow import environment_variables as env
from rllib_mlflow._logging import show_info_logs
from rllib_mlflow.export import FORMATS
from rllib_mlflow.export.agreement import DEFAULT_MIN_AGREEMENT
from rllib_mlflow.mlflow import preflight
from rllib_mlflow.mlflow.client import validate_tracking_uri
from rllib_mlflow.mlflow.runs import TrialInfo, redact_params
from rllib_mlflow.redaction import get_logger, redact
from rllib_mlflow.register.metrics import DEFAULT_BEST_METRIC, result_metrics
from rllib_mlflow.register.task import RegistrationSettings, RegistrationTask, resolve_settings
from rllib_mlflow.tune.dispatcher import (
    ExportDispatcher,
    default_export_workers,
    local_experiment_dir,
    resolve_export_on,
)
from rllib_mlflow.tune.journal import QUEUED
from rllib_mlflow.tune.messages import (
    Configure,
    EndRun,
    LogArtifacts,
    LogMetrics,
    LogParams,
    StartRun,
)
from rllib_mlflow.tune.staging import StagingLimit
from rllib_mlflow.validation import validate_tags

logger = get_logger(__name__)


class MLflowLoggerCallback(LoggerCallback):
    """A superset of Ray's `MLflowLoggerCallback`: one MLflow run per trial.

    Logs the flattened trial config as params (secret-looking values redacted) and every
    result's numeric metrics at ``step=training_iteration``, and ends each run as
    FINISHED, FAILED or (when the experiment stops first, e.g. on Ctrl-C) KILLED. Runs
    go to ``experiment_name``, else the experiment MLFLOW_EXPERIMENT_ID names, else
    MLFLOW_EXPERIMENT_NAME, else one named after the Tune experiment; models are
    registered in ``registry_uri``, else MLFLOW_REGISTRY_URI, else the tracking store. A
    restored experiment continues each trial's run.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        registry_uri: str | None = None,
        experiment_name: str | None = None,
        tags: dict[str, Any] | None = None,
        tracking_token: str | None = None,
        save_artifact: bool = False,
        log_params_on_trial_end: bool = False,
    ):
        for uri in (tracking_uri, registry_uri):
            if uri is not None:
                validate_tracking_uri(uri)
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri
        self.experiment_name = experiment_name
        self.tags = validate_tags(redact(dict(tags or {})))
        self.tracking_token = tracking_token
        self.save_artifact = save_artifact
        self.log_params_on_trial_end = log_params_on_trial_end
        self._dispatcher: ExportDispatcher | None = None

    # Tune hooks ------------------------------------------------------------------------

    def setup(self, *args, **kwargs) -> None:
        show_info_logs()  # the end-of-experiment progress must reach the person waiting
        if self.tracking_token:
            os.environ[env.MLFLOW_TRACKING_TOKEN.name] = self.tracking_token
        preflight.check_tracking_store(
            self.tracking_uri, registry_uri=self.registry_uri, **self._preflight_targets()
        )
        if self._dispatcher is None:
            self._dispatcher = ExportDispatcher(
                self._worker_settings(), **self._dispatcher_options()
            )
        self._dispatcher.start_worker()  # its start-up overlaps the trials' start-up

    def _worker_settings(self) -> Configure:
        experiment = self._experiment()
        return Configure(
            tracking_uri=self.tracking_uri,
            registry_uri=self.registry_uri,
            experiment_name=experiment.get("experiment_name"),
            experiment_id=experiment.get("experiment_id"),
            tags=self.tags,
            source=sys.argv[0] if sys.argv else "",
        )

    def _dispatcher_options(self) -> dict[str, Any]:
        return {}

    def _experiment(self) -> dict[str, str]:
        """Where the runs go, in the order Ray's callback and MLflow's env vars imply."""
        if self.experiment_name:
            return {"experiment_name": self.experiment_name}
        if experiment_id := env.MLFLOW_EXPERIMENT_ID.value():
            return {"experiment_id": experiment_id}
        if experiment_name := env.MLFLOW_EXPERIMENT_NAME.value():
            return {"experiment_name": experiment_name}
        return {}  # the Tune experiment's name, known per trial

    def _preflight_targets(self) -> dict[str, str | None]:
        return dict(self._experiment())

    # The hooks only capture what they need and queue it for the worker (in order, with
    # retries there), so that a slow or unreachable server never blocks or breaks training.

    def log_trial_start(self, trial) -> None:
        dispatcher, info = self._ensure_setup(), TrialInfo.of(trial)
        dispatcher.post(StartRun(trial=info))
        if not self.log_params_on_trial_end:
            dispatcher.post(LogParams(trial=info, params=redact_params(trial.config)))

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        message = LogMetrics(
            trial=TrialInfo.of(trial),
            metrics=result_metrics(result),
            step=int(result.get("training_iteration", iteration)),
            timestamp_ms=int(time.time() * 1000),  # when the result came (see LogMetrics)
        )
        self._ensure_setup().post(message, optional=True)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        dispatcher, info = self._ensure_setup(), TrialInfo.of(trial)
        if self.log_params_on_trial_end:
            dispatcher.post(LogParams(trial=info, params=redact_params(trial.config)))
        if self.save_artifact and trial.local_path is not None:  # None: Tune never set it up
            dispatcher.post(LogArtifacts(trial=info, path=trial.local_path))
        dispatcher.post(EndRun(trial=info, status="FAILED" if failed else "FINISHED"))

    def on_experiment_end(self, trials, **info) -> None:
        if self._dispatcher is None:
            return
        for trial in trials:  # runs not ended by now were stopped early, e.g. by Ctrl-C
            self._dispatcher.post(EndRun(trial=TrialInfo.of(trial), status="KILLED"))
        self._dispatcher.flush()

    # Pickling: Tune stores callbacks with the experiment state for `Tuner.restore`.

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dispatcher": None}

    def _ensure_setup(self) -> ExportDispatcher:
        if self._dispatcher is None:
            self.setup()
        assert self._dispatcher is not None  # setup made it
        return self._dispatcher


class MLflowCheckpointCallback(MLflowLoggerCallback):
    """Everything `MLflowLoggerCallback` does, and every checkpoint a registered version.

    On each checkpoint of each trial, the checkpoint is exported (see
    `rllib_mlflow.export_checkpoint`), logged as a LoggedModel of the trial's run at its
    training iteration with that iteration's metrics, and registered as a version of
    ``registered_model_name`` with tags, a model card and the ``best`` alias (see
    `rllib_mlflow.log_checkpoint`). This runs in the background: training never waits
    on it, and a failure to log never stops training.

    The registration settings (``registered_model_name``, ``formats``, ``best_metric``,
    ``best_mode``, ``log_rllib_checkpoint``, ``verify``, ``retries``, ``keep_last``,
    ``keep_best``, ``video``, ``min_int8_agreement``) are documented on
    `RegistrationSettings`; pass them as keywords, or all at once as ``settings=``.

    At the end of the experiment (and on Ctrl-C) it waits up to ``flush_timeout_s`` for
    the queued checkpoints, showing progress; whatever is left is in the journal in the
    experiment directory, for ``rllib-mlflow sync EXPERIMENT_DIR``.

    ``export_workers`` processes export in parallel (default: RLLIB_MLFLOW_EXPORT_WORKERS,
    else one per two cores, at most 4); each trial's checkpoints go to one of them, in
    order. At most ``max_staged`` checkpoints (and ``max_staged_bytes``) wait as staged
    copies (see `rllib_mlflow.tune.staging`); past that a checkpoint is exported from where
    Tune keeps it, which ``num_to_keep`` may delete before its turn.

    ``export_on="cluster"`` (default ``"driver"``, or RLLIB_MLFLOW_EXPORT_ON) runs the
    ``export_workers`` as Ray actors spread over the cluster's nodes, asking for no CPU and
    at the lowest priority, instead of processes on the driver's machine. The checkpoints
    must then be on storage every node can read: cloud storage or a shared filesystem (the
    staged copies are under the experiment directory; a node that cannot see them reads the
    checkpoint itself). rllib-mlflow must be installed on every node.
    """

    def __init__(
        self,
        registered_model_name: str | None = None,
        tracking_uri: str | None = None,
        *,
        settings: RegistrationSettings | None = None,
        formats: tuple[str, ...] | list[str] = FORMATS,
        best_metric: str = DEFAULT_BEST_METRIC,
        best_mode: str = "max",
        log_rllib_checkpoint: bool = False,
        verify: bool = True,
        flush_timeout_s: float = 600.0,
        retries: int = 5,
        keep_last: int | None = None,
        keep_best: int | None = None,
        video: bool = False,
        export_workers: int | None = None,
        max_staged: int | None = None,
        max_staged_bytes: int | None = None,
        export_on: str | None = None,
        min_int8_agreement: float = DEFAULT_MIN_AGREEMENT,
        **logger_kwargs: Any,
    ):
        super().__init__(tracking_uri, **logger_kwargs)
        self.settings = resolve_settings(
            settings,
            registered_model_name,
            formats=tuple(formats),
            best_metric=best_metric,
            best_mode=best_mode,
            log_rllib_checkpoint=log_rllib_checkpoint,
            verify=verify,
            retries=retries,
            keep_last=keep_last,
            keep_best=keep_best,
            video=video,
            min_int8_agreement=min_int8_agreement,
        )
        self.export_workers = export_workers or default_export_workers()
        self.export_on = resolve_export_on(export_on)
        self.staging_limit = StagingLimit.from_env(max_staged, max_staged_bytes)
        self.flush_timeout_s = flush_timeout_s
        self._best_metric_seen: bool | None = None

    def _dispatcher_options(self) -> dict[str, Any]:
        options = {"workers": self.export_workers, "staging": self.staging_limit}
        if self.export_on == "cluster":
            from rllib_mlflow.tune.ray_worker import RayWorker

            options["worker_factory"] = RayWorker
        return options

    def _worker_settings(self) -> Configure:
        return replace(super()._worker_settings(), prewarm_formats=self.settings.formats)

    def setup(self, *args, **kwargs) -> None:
        super().setup(*args, **kwargs)
        self._ensure_setup().flush_timeout_s = self.flush_timeout_s

    def _preflight_targets(self) -> dict[str, str | None]:
        return {
            **super()._preflight_targets(),
            "registered_model_name": self.settings.registered_model_name,
        }

    def log_trial_start(self, trial) -> None:
        super().log_trial_start(trial)
        try:  # before its first checkpoint, so that a `sync` meanwhile knows the trial's id
            journal = self._ensure_setup().journal_for(local_experiment_dir(trial))
            journal.record_trial(trial.trial_id, str(trial), trial.storage.trial_dir_name)
        except Exception:  # logging must never stop training
            logger.exception("could not journal the start of trial %s", trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        super().log_trial_result(iteration, trial, result)
        self._check_best_metric(result)

    def on_checkpoint(self, iteration: int, trials, trial, checkpoint, **info) -> None:
        try:
            self._queue_checkpoint(trial, checkpoint)
        except Exception:  # logging must never stop training
            logger.exception("could not queue checkpoint %s", checkpoint.path)

    def _queue_checkpoint(self, trial, checkpoint) -> None:
        from rllib_mlflow.rllib.env_record import creator_path
        from rllib_mlflow.rllib.uris import checkpoint_uri

        dispatcher, info = self._ensure_setup(), TrialInfo.of(trial)
        journal = dispatcher.journal_for(local_experiment_dir(trial))
        result = dict(trial.last_result or {})
        iteration = int(result.get("training_iteration", 0))
        source = checkpoint_uri(checkpoint)
        staged = dispatcher.staging.stage(
            checkpoint, journal.path.parent, trial.trial_id, iteration
        )
        task = RegistrationTask(
            settings=self.settings,
            checkpoint=staged or source,
            checkpoint_uri=source,
            training_iteration=iteration,
            metrics=result_metrics(result),
            trial_id=info.trial_id,
            trial_name=info.name,
            metrics_logged=True,  # the logger sent them before this, in the trial's order
            env_make=creator_path((trial.config or {}).get("env")),
        )
        # The journal never holds the tracking URI (it may carry credentials); the worker
        # adds it, and the run id of the trial.
        journal.record(QUEUED, task.key, **task.to_json())
        dispatcher.submit(journal, task, trial=info)

    def _check_best_metric(self, result: dict) -> None:
        if self._best_metric_seen:
            return
        metrics = result_metrics(result)
        name = self.settings.best_metric
        seen = name in metrics or any(k.rsplit("/", 1)[-1] == name for k in metrics)
        if seen:
            self._best_metric_seen = True
        elif self._best_metric_seen is None:
            self._best_metric_seen = False
            similar = sorted(k for k in metrics if name.split("_")[-1] in k)[:5]
            logger.warning(
                "best_metric %r is not in the trial results, so the 'best' "
                "alias will not move. Pass best_metric= one of the result keys, e.g. %s. "
                "Training and registration go on.",
                name,
                similar or sorted(metrics)[:5],
            )
