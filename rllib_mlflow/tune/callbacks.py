"""Ray Tune callbacks: one MLflow run per trial, and every checkpoint a registered version.

The hooks only translate Tune events into messages. `Exporter` passes them, in order, to
one worker process (`rllib_mlflow.tune.worker`) that does all the MLflow work at the lowest
CPU priority: the trials' runs, and exporting and registering checkpoints. So the driver
never imports mlflow, TensorFlow or torch, and never waits on a server. Every checkpoint
is first copied out of Tune's hands (so `num_to_keep` cannot delete it under us) and
written to a journal, so that nothing is lost on Ctrl-C or a crash:
`rllib-mlflow sync EXPERIMENT_DIR` finishes the job.
"""

from __future__ import annotations

import atexit
import itertools
import os
import queue
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ray.tune.logger import LoggerCallback

from rllib_mlflow._logging import show_info_logs
from rllib_mlflow.export import FORMATS
from rllib_mlflow.mlflow import preflight
from rllib_mlflow.mlflow.client import validate_tracking_uri
from rllib_mlflow.mlflow.runs import TrialInfo, redact_params
from rllib_mlflow.redaction import get_logger, redact
from rllib_mlflow.register.registration import (
    DEFAULT_BEST_METRIC,
    RegistrationSettings,
    result_metrics,
)
from rllib_mlflow.tune.journal import FAILED, QUEUED, REGISTERED, Journal, task_key
from rllib_mlflow.tune.worker import WorkerProcess
from rllib_mlflow.validation import validate_tags

logger = get_logger(__name__)

STAGING_DIR = ".rllib_mlflow_staging"


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
        self._exporter: Exporter | None = None

    # Tune hooks ------------------------------------------------------------------------

    def setup(self, *args, **kwargs) -> None:
        show_info_logs()  # the end-of-experiment progress must reach the person waiting
        if self.tracking_token:
            os.environ["MLFLOW_TRACKING_TOKEN"] = self.tracking_token
        preflight.check_tracking_store(
            self.tracking_uri, registry_uri=self.registry_uri, **self._preflight_targets()
        )
        if self._exporter is None:
            self._exporter = Exporter(
                {
                    "tracking_uri": self.tracking_uri,
                    "registry_uri": self.registry_uri,
                    **self._experiment(),
                    "tags": self.tags,
                    # MLflow's run context (source name, git commit) is the driver's script.
                    "source": sys.argv[0] if sys.argv else "",
                }
            )
        self._exporter.start_worker()  # its start-up overlaps the trials' start-up

    def _experiment(self) -> dict[str, str]:
        """Where the runs go, in the order Ray's callback and MLflow's env vars imply."""
        if self.experiment_name:
            return {"experiment_name": self.experiment_name}
        if os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return {"experiment_id": os.environ["MLFLOW_EXPERIMENT_ID"]}
        if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
            return {"experiment_name": os.environ["MLFLOW_EXPERIMENT_NAME"]}
        return {}  # the Tune experiment's name, known per trial

    def _preflight_targets(self) -> dict[str, str | None]:
        return dict(self._experiment())

    # The hooks only capture what they need and queue it for the worker (in order, with
    # retries there), so that a slow or unreachable server never blocks or breaks training.

    def log_trial_start(self, trial) -> None:
        self._ensure_setup()
        trial_info = TrialInfo.of(trial).to_json()
        self._exporter.send("start_run", trial=trial_info)
        if not self.log_params_on_trial_end:
            self._exporter.send("log_params", trial=trial_info, params=redact_params(trial.config))

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        self._exporter.send(
            "log_metrics",
            optional=True,
            trial=TrialInfo.of(trial).to_json(),
            metrics=result_metrics(result),
            step=int(result.get("training_iteration", iteration)),
        )

    def log_trial_end(self, trial, failed: bool = False) -> None:
        trial_info = TrialInfo.of(trial).to_json()
        if self.log_params_on_trial_end:
            self._exporter.send("log_params", trial=trial_info, params=redact_params(trial.config))
        if self.save_artifact:
            self._exporter.send("log_artifacts", trial=trial_info, path=trial.local_path)
        self._exporter.send("end_run", trial=trial_info, status="FAILED" if failed else "FINISHED")

    def on_experiment_end(self, trials, **info) -> None:
        if self._exporter is None:
            return
        for trial in trials:  # runs not ended by now were stopped early, e.g. by Ctrl-C
            self._exporter.send("end_run", trial=TrialInfo.of(trial).to_json(), status="KILLED")
        self._exporter.flush()

    # Pickling: Tune stores callbacks with the experiment state for `Tuner.restore`.

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_exporter": None}

    def _ensure_setup(self) -> None:
        if self._exporter is None:
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
    after each registration (see `rllib_mlflow.mlflow.retention`); versions holding ``best`` or
    any alias a person set are never deleted.

    Each version gets a model card (its description, and README.md with the model); with
    ``video=True`` also a replay of one seeded episode (replay.gif), recorded without Ray
    from the env's ``rgb_array`` render.
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
        video: bool = False,
        **logger_kwargs: Any,
    ):
        super().__init__(tracking_uri, **logger_kwargs)
        self.settings = RegistrationSettings(
            registered_model_name,
            best_metric,
            best_mode,
            tuple(formats),
            log_rllib_checkpoint,
            video,
        )
        self.verify = verify
        self.retention = {"keep_last": keep_last, "keep_best": keep_best}
        self.flush_timeout_s = flush_timeout_s
        self.retries = retries
        self._best_metric_seen: bool | None = None

    def setup(self, *args, **kwargs) -> None:
        super().setup(*args, **kwargs)
        self._exporter.flush_timeout_s = self.flush_timeout_s

    def _preflight_targets(self) -> dict[str, str | None]:
        return {
            **super()._preflight_targets(),
            "registered_model_name": self.settings.registered_model_name,
        }

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        super().log_trial_result(iteration, trial, result)
        self._check_best_metric(result)

    def on_checkpoint(self, iteration: int, trials, trial, checkpoint, **info) -> None:
        try:
            self._queue_checkpoint(trial, checkpoint)
        except Exception:  # logging must never stop training
            logger.exception("could not queue checkpoint %s", checkpoint.path)

    def _queue_checkpoint(self, trial, checkpoint) -> None:
        from rllib_mlflow.rllib.checkpoint import checkpoint_uri

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
            "video": self.settings.video,
            "verify": self.verify,
            "retries": self.retries,
            **self.retention,
        }
        # The journal never holds the tracking URI (it may carry credentials); the worker
        # adds it, and the run id of the trial.
        journal.record(QUEUED, key, **task)
        self._exporter.register(journal, key, task, trial=info.to_json())

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
    """The driver's side of the worker: a bounded, ordered outbox that a thread forwards to
    the worker process, what the worker has not answered yet, and the bounded final flush."""

    def __init__(self, worker_settings: dict[str, Any], max_queued: int = 10_000):
        self._outbox: queue.Queue = queue.Queue(maxsize=max_queued)
        self._worker = WorkerProcess(self._on_reply, worker_settings)
        self._unanswered: dict[str, dict[str, Any]] = {}  # by key, in the order sent
        self._registrations: dict[str, Journal] = {}  # checkpoint key -> its journal
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._stopping = False
        self._journals: dict[str, Journal] = {}
        self.flush_timeout_s = 600.0
        threading.Thread(target=self._forward, name="rllib-mlflow", daemon=True).start()
        atexit.register(self.flush)

    def start_worker(self) -> None:
        self._worker.start()

    def journal_for(self, trial) -> Journal:
        directory = _local_experiment_dir(trial)
        if directory not in self._journals:
            self._journals[directory] = Journal(directory)
        return self._journals[directory]

    def send(self, op: str, optional: bool = False, **fields: Any) -> None:
        """Queue one message for the worker; `optional` ones are dropped when it lags far."""
        self._queue({"op": op, "key": f"{op}-{next(self._ids)}", **fields}, optional)

    def register(self, journal: Journal, key: str, task: dict[str, Any], trial: dict) -> None:
        """Export and register `task` in the worker, after the messages queued before it
        (so that the iteration's metrics are in the run when the model links them)."""
        with self._lock:
            self._registrations[key] = journal
        self._queue({"op": "register", "key": key, "task": task, "trial": trial}, False)

    def _queue(self, message: dict[str, Any], optional: bool) -> None:
        try:
            self._outbox.put_nowait(message)
        except queue.Full:
            if not optional:
                self._outbox.put(message)
            else:
                logger.warning("tracking queue full; dropped one metrics update.")

    def flush(self) -> None:
        """Wait (bounded) for queued work, showing progress; leave the rest to `sync`."""
        if self._stopping:  # flushed already (atexit after the experiment end, or Ctrl-C)
            return
        deadline = time.monotonic() + self.flush_timeout_s
        last_report = 0.0
        try:
            while self._busy() and time.monotonic() < deadline:
                if self._registrations and time.monotonic() - last_report > 5:
                    logger.info("registering %d checkpoint(s)...", len(self._registrations))
                    last_report = time.monotonic()
                time.sleep(0.2)
        except KeyboardInterrupt:
            logger.warning("interrupted while registering checkpoints.")
        with self._lock:
            left = sorted({str(journal.path.parent) for journal in self._registrations.values()})
            count = len(self._registrations)
            self._stopping = True
        if count:
            logger.warning(
                "%d checkpoint(s) not registered yet; the journal keeps them. "
                "Run: rllib-mlflow sync %s",
                count,
                " ".join(left),
            )
        self._worker.stop()

    def _busy(self) -> bool:
        return bool(self._unanswered or self._outbox.unfinished_tasks)

    def _forward(self) -> None:
        while True:
            message = self._outbox.get()
            try:
                with self._lock:
                    self._unanswered[message["key"]] = message
                self._worker.submit(message)
            except Exception:  # a dead worker is restarted, and resent this, by _on_reply
                logger.warning("could not reach the worker", exc_info=True)
            finally:
                self._outbox.task_done()

    def _on_reply(self, key: str, reply: dict[str, Any]) -> None:
        if "worker_exited" in reply:
            self._restart_after_crash(reply["worker_exited"])
            return
        with self._lock:
            message = self._unanswered.pop(key, None)
            journal = self._registrations.pop(key, None)
        if journal is not None and message is not None:
            self._record_registration(journal, key, message["task"], reply)
        elif "error" in reply:
            logger.error("%s failed: %s; training goes on.", key, reply["error"])

    @staticmethod
    def _record_registration(journal: Journal, key: str, task: dict, reply: dict) -> None:
        if "versions" in reply:
            journal.record(REGISTERED, key, versions=reply["versions"])
            shutil.rmtree(task["checkpoint"], ignore_errors=True)
        else:
            journal.record(FAILED, key, error=reply["error"])
            logger.error(
                "could not register %s: %s. It stays in the journal for "
                "`rllib-mlflow sync`; training goes on.",
                key,
                reply["error"],
            )

    def _restart_after_crash(self, exit_code: int) -> None:
        with self._lock:
            unanswered = list(self._unanswered.values())
            if self._stopping or not unanswered:
                return
        logger.warning("the worker exited (%s); restarting it.", exit_code)
        for message in unanswered:  # in the order first sent
            self._worker.submit(message)


def _local_experiment_dir(trial) -> str:
    """The experiment directory when storage is local, else a local mirror of it."""
    storage = trial.storage
    if storage.storage_filesystem.type_name == "local":
        return storage.experiment_fs_path
    return os.path.join(os.path.expanduser("~/ray_results"), storage.experiment_dir_name)
