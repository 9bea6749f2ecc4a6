"""Ray Tune callbacks: one MLflow run per trial, and every checkpoint a registered version.

The hooks only translate Tune events. `TrialRuns` owns the MLflow runs; `Exporter` owns
the background work: an ordered thread for tracking calls and one spawned process that
exports and registers checkpoints (TensorFlow needs a process where RLlib did not import
it first, and training must not wait). Every checkpoint is first copied out of Tune's
hands (so `num_to_keep` cannot delete it under us) and written to a journal, so that
nothing is lost on Ctrl-C or a crash: `rllib-mlflow sync EXPERIMENT_DIR` finishes the job.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.logger import LoggerCallback

from rllib_mlflow import __version__, registry
from rllib_mlflow._worker import WorkerProcess, with_retries
from rllib_mlflow.export import FORMATS
from rllib_mlflow.journal import FAILED, QUEUED, REGISTERED, Journal, task_key
from rllib_mlflow.tracking import DEFAULT_BEST_METRIC, RegistrationSettings, result_metrics

logger = logging.getLogger(__name__)

TAG_TRIAL_ID = "rllib_mlflow.trial_id"
STAGING_DIR = ".rllib_mlflow_staging"
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[_-]?key|credential|auth|private", re.I)
_PARAM_VALUE_LIMIT = 6000
_PARAMS_PER_BATCH = 100


def redact_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The flattened config as MLflow params, with secret-looking values replaced."""
    params = {}
    for key, value in _flatten(config).items():
        text = "***" if _SECRET_KEY.search(key) else str(value)
        params[key[:250]] = text[:_PARAM_VALUE_LIMIT]
    return params


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


class MLflowLoggerCallback(LoggerCallback):
    """A superset of Ray's `MLflowLoggerCallback`: one MLflow run per trial.

    Logs the flattened trial config as params (secret-looking values redacted) and every
    result's numeric metrics at ``step=training_iteration``, and ends each run as
    FINISHED, FAILED or (when the experiment stops first, e.g. on Ctrl-C) KILLED. Runs
    are grouped under ``experiment_name`` (default: the Tune experiment's name). A
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
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri
        self.experiment_name = experiment_name
        self.tags = dict(tags or {})
        self.tracking_token = tracking_token
        self.save_artifact = save_artifact
        self.log_params_on_trial_end = log_params_on_trial_end
        self._runs: TrialRuns | None = None
        self._exporter: Exporter | None = None

    # Tune hooks ------------------------------------------------------------------------

    def setup(self, *args, **kwargs) -> None:
        if self.tracking_token:
            os.environ["MLFLOW_TRACKING_TOKEN"] = self.tracking_token
        mlflow_client = registry.client(self.tracking_uri)
        registry.check_tracking_server(mlflow_client)  # before any trial starts
        self._runs = TrialRuns(mlflow_client, self.experiment_name, self.tags)
        self._check_write_access(mlflow_client)
        self._exporter = self._exporter or Exporter()

    def _check_write_access(self, mlflow_client) -> None:
        """Refuse a read-only user now; the experiment is only known when named."""
        name = self.experiment_name
        if name:
            registry.check_write_access(
                mlflow_client,
                f"experiment {name!r}",
                lambda: mlflow_client.set_experiment_tag(
                    self._runs.experiment_id(name), registry.TAG_WRITER, __version__
                ),
            )

    # The hooks only capture what they need and queue the MLflow calls on the background
    # thread (in order, with retries), so that a slow or unreachable server never blocks
    # or breaks training.

    def log_trial_start(self, trial) -> None:
        self._ensure_setup()
        info, config = TrialInfo.of(trial), dict(trial.config)
        self._exporter.call(lambda: self._runs.start(info))
        if not self.log_params_on_trial_end:
            self._exporter.call(lambda: self._runs.log_params(info, config))

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        info, metrics = TrialInfo.of(trial), result_metrics(result)
        step = int(result.get("training_iteration", iteration))
        self._exporter.call(lambda: self._runs.log_metrics(info, metrics, step), optional=True)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        info, config = TrialInfo.of(trial), dict(trial.config)
        if self.log_params_on_trial_end:
            self._exporter.call(lambda: self._runs.log_params(info, config))
        if self.save_artifact:
            path = trial.local_path
            self._exporter.call(lambda: self._runs.log_artifacts(info, path))
        status = "FAILED" if failed else "FINISHED"
        self._exporter.call(lambda: self._runs.end(info, status))

    def on_experiment_end(self, trials, **info) -> None:
        if self._exporter is None:
            return
        for trial in trials:  # runs not ended by now were stopped early, e.g. by Ctrl-C
            trial_info = TrialInfo.of(trial)
            self._exporter.call(lambda i=trial_info: self._runs.end(i, "KILLED"))
        self._exporter.flush()

    # Pickling: Tune stores callbacks with the experiment state for `Tuner.restore`.

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runs": None, "_exporter": None}

    def _ensure_setup(self) -> None:
        if self._runs is None:
            self.setup()


class MLflowCheckpointCallback(MLflowLoggerCallback):
    """Everything `MLflowLoggerCallback` does, and every checkpoint a registered version.

    On each checkpoint of each trial, the checkpoint is exported (see
    `rllib_mlflow.export_checkpoint`), logged as a LoggedModel of the trial's run at its
    training iteration with that iteration's metrics, and registered as a version of
    ``registered_model_name`` with tags and the ``best`` and ``iter-N`` aliases (see
    `rllib_mlflow.log_checkpoint`). This runs in the background: training never waits
    on it, and a failure to log never stops training.

    At the end of the experiment (and on Ctrl-C) it waits up to ``flush_timeout_s`` for
    the queued checkpoints, showing progress; whatever is left is in the journal in the
    experiment directory, for ``rllib-mlflow sync EXPERIMENT_DIR``.

    With ``keep_last`` / ``keep_best``, versions outside that retention policy are deleted
    after each registration (see `rllib_mlflow.retention`); versions holding ``best`` or
    any alias a person set are never deleted.
    """

    def __init__(
        self,
        registered_model_name: str,
        tracking_uri: str | None = None,
        *,
        formats: tuple[str, ...] | list[str] = FORMATS,
        best_metric: str = DEFAULT_BEST_METRIC,
        best_mode: str = "max",
        log_rllib_checkpoint: bool = False,
        verify: bool = True,
        flush_timeout_s: float = 600.0,
        retries: int = 5,
        keep_last: int | None = None,
        keep_best: int | None = None,
        **logger_kwargs: Any,
    ):
        super().__init__(tracking_uri, **logger_kwargs)
        self.settings = RegistrationSettings(
            registered_model_name, best_metric, best_mode, tuple(formats), log_rllib_checkpoint
        )
        self.verify = verify
        self.retention = {"keep_last": keep_last, "keep_best": keep_best}
        self.flush_timeout_s = flush_timeout_s
        self.retries = retries
        self._best_metric_seen: bool | None = None

    def setup(self, *args, **kwargs) -> None:
        super().setup(*args, **kwargs)
        self._exporter.configure(self.flush_timeout_s)
        self._exporter.start_worker()  # its imports take seconds: pay them while training

    def _check_write_access(self, mlflow_client) -> None:
        super()._check_write_access(mlflow_client)
        name = self.settings.registered_model_name

        def tag_model_if_it_exists():  # else the first registration creates it
            if registry.registered_model_exists(mlflow_client, name):
                mlflow_client.set_registered_model_tag(name, registry.TAG_WRITER, __version__)

        registry.check_write_access(
            mlflow_client, f"registered model {name!r}", tag_model_if_it_exists
        )

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        super().log_trial_result(iteration, trial, result)
        self._check_best_metric(result)

    def on_checkpoint(self, iteration: int, trials, trial, checkpoint, **info) -> None:
        try:
            self._queue_checkpoint(trial, checkpoint)
        except Exception:  # logging must never stop training
            logger.exception("rllib-mlflow could not queue checkpoint %s", checkpoint.path)

    def _queue_checkpoint(self, trial, checkpoint) -> None:
        from rllib_mlflow.checkpoint import checkpoint_uri

        self._ensure_setup()
        info = TrialInfo.of(trial)
        journal = self._exporter.journal_for(trial)
        result = dict(trial.last_result or {})
        iteration = int(result.get("training_iteration", 0))
        key = task_key(trial.trial_id, iteration)
        source = checkpoint_uri(checkpoint)
        staged = _stage_checkpoint(checkpoint, journal.path.parent, trial.trial_id, iteration)
        task = {
            "checkpoint": staged,
            "checkpoint_uri": source,
            "registered_model_name": self.settings.registered_model_name,
            "training_iteration": iteration,
            "metrics": result_metrics(result),
            "trial_id": info.trial_id,
            "trial_name": info.name,
            "formats": list(self.settings.formats),
            "best_metric": self.settings.best_metric,
            "best_mode": self.settings.best_mode,
            "log_rllib_checkpoint": self.settings.log_rllib_checkpoint,
            "verify": self.verify,
            "retries": self.retries,
            **self.retention,
        }
        # The journal never holds the tracking URI: it may carry credentials.
        journal.record(QUEUED, key, **task)
        task["tracking_uri"] = self.tracking_uri
        self._exporter.register(journal, key, task, run_id=lambda: self._runs.run_id(info))

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
                "rllib-mlflow: best_metric %r is not in the trial results, so the 'best' "
                "alias will not move. Pass best_metric= one of the result keys, e.g. %s. "
                "Training and registration go on.",
                name,
                similar or sorted(metrics)[:5],
            )


# -- MLflow runs, one per trial -----------------------------------------------------------


@dataclass(frozen=True)
class TrialInfo:
    """What the background thread needs of a Tune trial (the trial itself keeps changing)."""

    trial_id: str
    name: str
    experiment_dir_name: str

    @classmethod
    def of(cls, trial) -> TrialInfo:
        return cls(trial.trial_id, str(trial), trial.experiment_dir_name)


class TrialRuns:
    """The MLflow run of each trial; continues a restored trial's run. Used from the
    background thread only."""

    def __init__(self, mlflow_client, experiment_name: str | None, tags: dict[str, Any]):
        self.client = mlflow_client
        self.experiment_name = experiment_name
        self.tags = tags
        self._runs: dict[str, str] = {}
        self._open: set[str] = set()
        self._lock = threading.Lock()

    def start(self, trial: TrialInfo) -> str:
        with self._lock:
            if trial.trial_id in self._runs:
                return self._runs[trial.trial_id]
            experiment_id = self.experiment_id(self.experiment_name or trial.experiment_dir_name)
            run_id = self._existing_run(experiment_id, trial.trial_id)
            if run_id is None:
                tags = {**self.tags, "trial_name": trial.name, TAG_TRIAL_ID: trial.trial_id}
                run = self.client.create_run(experiment_id, tags=tags, run_name=trial.name)
                run_id = run.info.run_id
            else:
                self.client.update_run(run_id, status="RUNNING")
            self._runs[trial.trial_id] = run_id
            self._open.add(trial.trial_id)
            return run_id

    def run_id(self, trial: TrialInfo) -> str:
        return self._runs.get(trial.trial_id) or self.start(trial)

    def log_params(self, trial: TrialInfo, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        run_id = self.run_id(trial)
        existing = self.client.get_run(run_id).data.params
        params = [Param(k, v) for k, v in redact_params(config).items() if k not in existing]
        for start in range(0, len(params), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, trial: TrialInfo, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        run_id = self.run_id(trial)
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[start : start + 1000])

    def log_artifacts(self, trial: TrialInfo, path: str) -> None:
        self.client.log_artifacts(self.run_id(trial), path)

    def end(self, trial: TrialInfo, status: str) -> None:
        if trial.trial_id in self._open:
            self.client.set_terminated(self._runs[trial.trial_id], status=status)
            self._open.discard(trial.trial_id)

    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:
            return self.client.get_experiment_by_name(name).experiment_id  # created meanwhile

    def _existing_run(self, experiment_id: str, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [experiment_id], f"tags.`{TAG_TRIAL_ID}` = '{trial_id}'", max_results=1
        )
        return runs[0].info.run_id if runs else None


def _stage_checkpoint(checkpoint, journal_dir: Path, trial_id: str, iteration: int) -> str:
    """Copy the checkpoint where Tune's `num_to_keep` cannot delete it before export."""
    target = journal_dir / STAGING_DIR / trial_id / f"checkpoint_{iteration:06d}"
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.to_directory(str(target))
    return str(target)


# -- background work ----------------------------------------------------------------------


class Exporter:
    """Runs tracking calls in order on a thread, and registrations in the worker process."""

    def __init__(self, max_queued: int = 10_000):
        self._calls: queue.Queue = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._work, name="rllib-mlflow", daemon=True)
        self._worker = WorkerProcess(self._on_reply)
        self._pending: dict[str, tuple[Journal, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._journals: dict[str, Journal] = {}
        self.flush_timeout_s = 600.0
        self._thread.start()
        atexit.register(self.flush)

    def configure(self, flush_timeout_s: float) -> None:
        self.flush_timeout_s = flush_timeout_s

    def start_worker(self) -> None:
        self._worker.start()

    def journal_for(self, trial) -> Journal:
        directory = _local_experiment_dir(trial)
        if directory not in self._journals:
            self._journals[directory] = Journal(directory)
        return self._journals[directory]

    def call(self, fn: Callable[[], Any], optional: bool = False) -> None:
        """Run `fn` on the background thread, after everything queued before it."""
        try:
            self._calls.put_nowait(fn)
        except queue.Full:
            if not optional:
                self._calls.put(fn)
            else:
                logger.warning("rllib-mlflow: tracking queue full; dropped one metrics update.")

    def register(
        self, journal: Journal, key: str, task: dict[str, Any], run_id: Callable[[], str]
    ) -> None:
        """Export and register `task` in the worker, after the calls queued before it
        (so that the iteration's metrics are in the run when the model links them)."""
        with self._lock:
            self._pending[key] = (journal, task)

        def submit() -> None:
            task["run_id"] = run_id()
            self._worker.submit(key, task)

        self.call(submit)

    def flush(self) -> None:
        """Wait (bounded) for queued work, showing progress; leave the rest to `sync`."""
        if self._stopping:  # flushed already (atexit after the experiment end, or Ctrl-C)
            return
        deadline = time.monotonic() + self.flush_timeout_s
        last_report = 0.0
        try:
            while (self._pending or self._calls.unfinished_tasks) and time.monotonic() < deadline:
                if self._pending and time.monotonic() - last_report > 5:
                    print(f"rllib-mlflow: registering {len(self._pending)} checkpoint(s)...")
                    last_report = time.monotonic()
                time.sleep(0.2)
        except KeyboardInterrupt:
            print("rllib-mlflow: interrupted while registering checkpoints.")
        with self._lock:
            left = list(self._pending.values())
            self._stopping = True
        if left:
            directories = sorted({str(journal.path.parent) for journal, _ in left})
            print(
                f"rllib-mlflow: {len(left)} checkpoint(s) not registered yet; the journal "
                f"keeps them. Run: rllib-mlflow sync {' '.join(directories)}"
            )
        self._worker.stop()

    def _work(self) -> None:
        while True:
            fn = self._calls.get()
            try:
                with_retries(fn)
            except Exception:
                logger.exception("rllib-mlflow: a tracking call failed; training goes on.")
            finally:
                self._calls.task_done()

    def _on_reply(self, key: str, reply: dict[str, Any]) -> None:
        if "worker_exited" in reply:
            self._restart_after_crash(reply["worker_exited"])
            return
        with self._lock:
            journal, task = self._pending.pop(key, (None, None))
        if journal is None:
            return
        if "versions" in reply:
            journal.record(REGISTERED, key, versions=reply["versions"])
            shutil.rmtree(task["checkpoint"], ignore_errors=True)
        else:
            journal.record(FAILED, key, error=reply["error"])
            logger.error(
                "rllib-mlflow could not register %s: %s. It stays in the journal for "
                "`rllib-mlflow sync`; training goes on.",
                key,
                reply["error"],
            )

    def _restart_after_crash(self, exit_code: int) -> None:
        with self._lock:
            pending = dict(self._pending)
            if self._stopping or not pending:
                return
        logger.warning("rllib-mlflow: the export worker exited (%s); restarting it.", exit_code)
        for key, (_, task) in pending.items():
            self.call(lambda key=key, task=task: self._worker.submit(key, task))


def _local_experiment_dir(trial) -> str:
    """The experiment directory when storage is local, else a local mirror of it."""
    storage = trial.storage
    if storage.storage_filesystem.type_name == "local":
        return storage.experiment_fs_path
    return os.path.join(os.path.expanduser("~/ray_results"), storage.experiment_dir_name)
