"""The driver's side of the export workers: ordered outboxes, one per worker, what the
workers have not answered yet, and the bounded final flush.

Every message of a trial goes to the same worker (trials take the workers in turn as they
first appear; not a hash of the trial id: Tune's ids differ only in a counter, and crc32,
being linear, sent the first four trials of every sweep to one of two workers), so a trial's
runs, metrics and registrations happen in the order Tune produced them, while trials
export in parallel. A worker starts when its first message comes, so a one-trial sweep
starts one.
"""

from __future__ import annotations

import atexit
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rllib_mlflow.redaction import get_logger
from rllib_mlflow.register.task import RegistrationTask
from rllib_mlflow.tune.journal import FAILED, REGISTERED, Journal
from rllib_mlflow.tune.staging import Staging, StagingLimit
from rllib_mlflow.tune.worker import WorkerProcess

logger = get_logger(__name__)

# Makes a lane's worker from (on_reply, worker settings): `WorkerProcess`, or `RayWorker`
# (rllib_mlflow.tune.ray_worker) to export on the Ray cluster's nodes.
WorkerFactory = Callable[[Callable[..., None], dict[str, Any]], Any]


def default_export_workers() -> int:
    """RLLIB_MLFLOW_EXPORT_WORKERS, else one per two cores (at most 4): training keeps the
    others, and each worker holds TensorFlow and torch in memory."""
    value = os.environ.get("RLLIB_MLFLOW_EXPORT_WORKERS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"RLLIB_MLFLOW_EXPORT_WORKERS must be 1 or more, not {value!r}.")
        return int(value)
    return max(1, min(4, (os.cpu_count() or 2) // 2))


EXPORT_ON = ("driver", "cluster")


def resolve_export_on(value: str | None) -> str:
    """`value`, else RLLIB_MLFLOW_EXPORT_ON, else "driver"; refused early when unknown."""
    chosen = value or os.environ.get("RLLIB_MLFLOW_EXPORT_ON", "").strip() or "driver"
    if chosen not in EXPORT_ON:
        source = "export_on" if value else "RLLIB_MLFLOW_EXPORT_ON"
        raise ValueError(
            f"{source} must be 'driver' (export processes on the driver's machine) or "
            f"'cluster' (Ray actors on the cluster's nodes, for checkpoints on storage every "
            f"node can read), not {chosen!r}."
        )
    return chosen


class _Lane:
    """One worker process and the outbox a thread forwards to it, in order."""

    def __init__(self, worker: WorkerProcess, max_queued: int):
        self.worker = worker
        self.outbox: queue.Queue = queue.Queue(maxsize=max_queued)
        self.unanswered: dict[str, dict[str, Any]] = {}  # by key, in the order sent
        self.sending = threading.Lock()  # a (re)started worker gets the unanswered first

    def deliver(self, message: dict[str, Any] | None, lock: threading.Lock) -> None:
        """Send `message` (None: nothing new) to the worker, starting it if it is not
        running; a worker just started gets every unanswered message first, in the order
        first sent, so that a trial's messages stay in order across a crash, and none is
        sent twice to the same worker."""
        with self.sending:
            with lock:
                if message is not None:
                    self.unanswered[message["key"]] = message
                unanswered = list(self.unanswered.values())
            if self.worker.start():
                for earlier in unanswered:
                    self.worker.submit(earlier)
            elif message is not None:
                self.worker.submit(message)


class Exporter:
    """Queue work for the workers without ever blocking the Tune driver on them."""

    def __init__(
        self,
        worker_settings: dict[str, Any],
        *,
        workers: int = 1,
        staging: StagingLimit | None = None,
        max_queued: int = 10_000,
        worker_factory: WorkerFactory = WorkerProcess,
    ):
        self._lanes = [
            _Lane(worker_factory(self._on_reply, worker_settings), max_queued)
            for _ in range(workers)
        ]
        self._lane_of_trial: dict[str, int] = {}
        self.staging = Staging(staging or StagingLimit())
        self._registrations: dict[str, tuple[Journal, RegistrationTask]] = {}
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)  # notified as work gets done
        self._ids = itertools.count()
        self._stopping = False
        self._journals: dict[str, Journal] = {}
        self.flush_timeout_s = 600.0
        for index, lane in enumerate(self._lanes):  # idle until a message comes
            name = f"rllib-mlflow-{index}"
            threading.Thread(target=self._forward, args=(lane,), name=name, daemon=True).start()
        atexit.register(self.flush)

    def trials_per_worker(self) -> list[int]:
        """How many trials each worker was given (for reports)."""
        with self._lock:
            lanes = list(self._lane_of_trial.values())
        return [lanes.count(index) for index in range(len(self._lanes))]

    def start_worker(self, trial_id: str = "") -> None:
        """Start the worker of `trial_id`'s lane now, so that its start-up overlaps the
        trials' start-up rather than their first iterations."""
        self._lane(trial_id).worker.start()

    def journal_for(self, directory: str) -> Journal:
        if directory not in self._journals:
            self._journals[directory] = Journal(directory)
        return self._journals[directory]

    def send(self, op: str, trial: dict[str, str], optional: bool = False, **fields: Any) -> None:
        """Queue one message about `trial`; `optional` ones are dropped when its worker lags
        far behind."""
        message = {"op": op, "key": f"{op}-{next(self._ids)}", "trial": trial, **fields}
        self._queue(message, optional)

    def register(self, journal: Journal, task: RegistrationTask, trial: dict[str, str]) -> None:
        """Export and register `task` after the messages queued before it about the same
        trial (so that the iteration's metrics are in the run when the model links them)."""
        with self._lock:
            self._registrations[task.key] = (journal, task)
        message = {"op": "register", "key": task.key, "task": task.to_json(), "trial": trial}
        self._queue(message, optional=False)

    def flush(self) -> None:
        """Wait (bounded) for queued work, showing progress; leave the rest to `sync`."""
        if self._stopping:  # flushed already (atexit after the experiment end, or Ctrl-C)
            return
        deadline = time.monotonic() + self.flush_timeout_s
        last_report = 0.0
        try:
            with self._progress:
                while self._busy() and time.monotonic() < deadline:
                    if self._registrations and time.monotonic() - last_report > 5:
                        logger.info("registering %d checkpoint(s)...", len(self._registrations))
                        last_report = time.monotonic()
                    self._progress.wait(min(5.0, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:
            logger.warning("interrupted while registering checkpoints.")
        with self._lock:
            left = sorted({str(j.path.parent) for j, _ in self._registrations.values()})
            count = len(self._registrations)
            self._stopping = True
        if count:
            logger.warning(
                "%d checkpoint(s) not registered yet; the journal keeps them. "
                "Run: rllib-mlflow sync %s",
                count,
                " ".join(left),
            )
        for lane in self._lanes:
            lane.worker.stop()

    # -- internals ----------------------------------------------------------------------

    def _lane(self, trial_id: str) -> _Lane:
        with self._lock:
            index = self._lane_of_trial.get(trial_id)
            if index is None:  # the next lane in turn ("" for `start_worker`: the first trial's)
                index = len(self._lane_of_trial) % len(self._lanes)
                if trial_id:
                    self._lane_of_trial[trial_id] = index
        return self._lanes[index]

    def _queue(self, message: dict[str, Any], optional: bool) -> None:
        lane = self._lane(message["trial"]["trial_id"])
        try:
            lane.outbox.put_nowait(message)
        except queue.Full:
            if not optional:
                lane.outbox.put(message)
            else:
                logger.warning("tracking queue full; dropped one metrics update.")

    def _busy(self) -> bool:
        """Whether any message is queued or unanswered (call with the lock held)."""
        return any(lane.unanswered or lane.outbox.unfinished_tasks for lane in self._lanes)

    def _forward(self, lane: _Lane) -> None:
        while True:
            message = lane.outbox.get()
            try:
                lane.deliver(message, self._lock)
            except Exception:  # a dead worker is restarted, and resent this, by _on_reply
                logger.warning("could not reach the worker", exc_info=True)
            finally:
                with self._progress:
                    lane.outbox.task_done()
                    self._progress.notify_all()

    def _on_reply(self, worker: WorkerProcess, key: str, reply: dict[str, Any]) -> None:
        lane = next(lane for lane in self._lanes if lane.worker is worker)
        if "worker_exited" in reply:
            self._restart_after_crash(lane, reply["worker_exited"])
            return
        with self._lock:
            answered = key in lane.unanswered
            registration = self._registrations.pop(key, None)
        if "node" in reply:
            logger.debug("%s done on node %s", key, reply["node"])
        if registration is not None and answered:
            self._record_registration(*registration, reply)
        elif "error" in reply:
            logger.error("%s failed: %s; training goes on.", key, reply["error"])
        with self._progress:  # only now: the flush must not end before the journal has it
            lane.unanswered.pop(key, None)
            self._progress.notify_all()

    def _record_registration(self, journal: Journal, task: RegistrationTask, reply: dict) -> None:
        if "versions" in reply:
            journal.record(REGISTERED, task.key, versions=reply["versions"])
            self.staging.release(task.checkpoint)
        else:
            journal.record(FAILED, task.key, error=reply["error"])
            logger.error(
                "could not register %s: %s. It stays in the journal for "
                "`rllib-mlflow sync`; training goes on.",
                task.key,
                reply["error"],
            )

    def _restart_after_crash(self, lane: _Lane, exit_code: int) -> None:
        with self._lock:
            if self._stopping or not lane.unanswered:
                return
        logger.warning("the worker exited (%s); restarting it.", exit_code)
        lane.deliver(None, self._lock)


def local_experiment_dir(trial) -> str:
    """The experiment directory when storage is local, else a local mirror of it."""
    storage = trial.storage
    if storage.storage_filesystem.type_name == "local":
        return storage.experiment_fs_path
    return str(Path("~/ray_results").expanduser() / storage.experiment_dir_name)
