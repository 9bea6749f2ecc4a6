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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from rllib_mlflow import environment_variables as env
from rllib_mlflow.console import how_it_ended, one_line
from rllib_mlflow.mlflow.runs import TrialInfo
from rllib_mlflow.redaction import get_logger
from rllib_mlflow.register.task import RegistrationTask
from rllib_mlflow.tune.journal import FAILED, REGISTERED, Journal
from rllib_mlflow.tune.messages import (
    Configure,
    Failed,
    Register,
    Registered,
    Reply,
    TrialRequest,
    UnknownMessage,
    WorkerExited,
    decode_reply,
    decode_request,
    encode_request,
)
from rllib_mlflow.tune.staging import Staging, StagingLimit
from rllib_mlflow.tune.worker import OnReply, WorkerProcess, configure_message

logger = get_logger(__name__)


class Worker(Protocol):
    """What a lane needs of its worker: `WorkerProcess`, or `RayWorker`
    (rllib_mlflow.tune.ray_worker) to export on the Ray cluster's nodes."""

    def start(self) -> bool: ...
    def submit(self, message: Mapping[str, Any]) -> None: ...
    def stop(self) -> None: ...


# Makes a lane's worker from (on_reply, the `Configure` it sends each worker it starts).
WorkerFactory = Callable[[OnReply, Configure], Worker]


def default_export_workers() -> int:
    """RLLIB_MLFLOW_EXPORT_WORKERS, else one per two cores (at most 4): training keeps the
    others, and each worker holds TensorFlow and torch in memory."""
    value = env.RLLIB_MLFLOW_EXPORT_WORKERS.text()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"RLLIB_MLFLOW_EXPORT_WORKERS must be 1 or more, not {value!r}.")
        return int(value)
    return max(1, min(4, (os.cpu_count() or 2) // 2))


EXPORT_ON = ("driver", "cluster")


def resolve_export_on(value: str | None) -> str:
    """`value`, else RLLIB_MLFLOW_EXPORT_ON, else "driver"; refused early when unknown."""
    chosen = value or env.RLLIB_MLFLOW_EXPORT_ON.text()
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

    def __init__(self, worker: Worker, max_queued: int):
        self.worker = worker
        self.outbox: queue.Queue[tuple[str, TrialRequest]] = queue.Queue(maxsize=max_queued)
        self.unanswered: dict[str, TrialRequest] = {}  # by key, in the order sent
        self.sending = threading.Lock()  # a (re)started worker gets the unanswered first

    def deliver(self, message: tuple[str, TrialRequest] | None, lock: threading.Lock) -> None:
        """Send `message` (None: nothing new) to the worker, starting it if it is not
        running; a worker just started gets every unanswered message first, in the order
        first sent, so that a trial's messages stay in order across a crash, and none is
        sent twice to the same worker."""
        with self.sending:
            with lock:
                if message is not None:
                    self.unanswered[message[0]] = message[1]
                unanswered = list(self.unanswered.items())
            if self.worker.start():
                for key, earlier in unanswered:
                    self.worker.submit(encode_request(earlier, key))
            elif message is not None:
                self.worker.submit(encode_request(message[1], message[0]))


class ExportDispatcher:
    """Queue work for the workers without ever blocking the Tune driver on them."""

    def __init__(
        self,
        worker_settings: Configure | Mapping[str, Any],
        *,
        workers: int = 1,
        staging: StagingLimit | None = None,
        max_queued: int = 10_000,
        worker_factory: WorkerFactory = WorkerProcess,
    ):
        configure = configure_message(worker_settings)
        self._lanes = [
            _Lane(worker_factory(self._on_reply, configure), max_queued) for _ in range(workers)
        ]
        self._lane_of_trial: dict[str, int] = {}
        self.staging = Staging(staging or StagingLimit())
        self._registrations: dict[str, tuple[Journal, RegistrationTask]] = {}
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)  # notified as work gets done
        self._ids = itertools.count()
        self._stopping = False
        self._flushing = False  # the experiment has ended: training no longer goes on
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

    def post(self, request: TrialRequest, optional: bool = False) -> None:
        """Queue one request about its trial (not a `Register`: see `submit`); `optional`
        ones are dropped when its worker lags far behind."""
        if isinstance(request, Register):
            raise TypeError("queue a registration with ExportDispatcher.submit (it is journaled)")
        self._queue(f"{request.op}-{next(self._ids)}", request, optional)

    def send(
        self, op: str, trial: Mapping[str, str], optional: bool = False, **fields: Any
    ) -> None:
        """`post` the request named `op`, from its fields as JSON (for scripts); an unknown
        op or field is refused here, on the driver."""
        _, request = decode_request({"op": op, "trial": trial, **fields})
        if isinstance(request, Configure):
            raise TypeError("a worker's handle sends it Configure when it starts it")
        self.post(request, optional)

    def submit(
        self, journal: Journal, task: RegistrationTask, trial: TrialInfo | Mapping[str, str]
    ) -> None:
        """Export and register `task` after the messages queued before it about the same
        trial (so that the iteration's metrics are in the run when the model links them)."""
        with self._lock:
            self._registrations[task.key] = (journal, task)
        info = trial if isinstance(trial, TrialInfo) else TrialInfo(**trial)
        self._queue(task.key, Register(trial=info, task=task), optional=False)

    def flush(self) -> None:
        """Wait (bounded) for queued work, showing progress; leave the rest to `sync`."""
        if self._stopping:  # flushed already (atexit after the experiment end, or Ctrl-C)
            return
        self._flushing = True
        deadline = time.monotonic() + self.flush_timeout_s
        last_report, reported = 0.0, 0
        try:
            with self._progress:
                while self._busy() and time.monotonic() < deadline:
                    waiting = len(self._registrations)
                    # When the count changes, else every 30 s: an outage is told by retries.
                    if waiting and (waiting != reported or time.monotonic() - last_report > 30):
                        logger.info("registering %d checkpoint(s)...", waiting)
                        last_report, reported = time.monotonic(), waiting
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

    def _queue(self, key: str, request: TrialRequest, optional: bool) -> None:
        lane = self._lane(request.trial.trial_id)
        try:
            lane.outbox.put_nowait((key, request))
        except queue.Full:
            if not optional:
                lane.outbox.put((key, request))
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
            except Exception as error:  # a dead worker is restarted, and resent this, by _on_reply
                _unreachable(error)
            finally:
                with self._progress:
                    lane.outbox.task_done()
                    self._progress.notify_all()

    def _on_reply(self, worker: Worker, key: str, message: Mapping[str, Any]) -> None:
        lane = next(lane for lane in self._lanes if lane.worker is worker)
        try:
            reply = decode_reply(message)
        except UnknownMessage as error:  # answered all the same: nothing waits on it forever
            reply = Failed(error=str(error))
        if isinstance(reply, WorkerExited):
            self._restart_after_crash(lane, reply.exit)
            return
        with self._lock:
            answered = key in lane.unanswered
            registration = self._registrations.pop(key, None)
        if reply.node is not None:
            logger.debug("%s done on node %s", key, reply.node)
        if registration is not None and answered:
            self._record_registration(*registration, reply)
        elif isinstance(reply, Failed):
            logger.error("%s failed: %s; %s.", key, reply.error, self._what_next())
        with self._progress:  # only now: the flush must not end before the journal has it
            lane.unanswered.pop(key, None)
            self._progress.notify_all()

    def _record_registration(self, journal: Journal, task: RegistrationTask, reply: Reply) -> None:
        if isinstance(reply, Registered):
            journal.record(REGISTERED, task.key, versions=reply.versions)
            self.staging.release(task.checkpoint)
            return
        error = reply.error if isinstance(reply, Failed) else f"unexpected reply {reply}"
        journal.record(FAILED, task.key, error=error)
        logger.error(
            "could not register %s: %s. It stays in the journal for `rllib-mlflow sync`; %s.",
            task.key,
            error,
            self._what_next(),
        )

    def _what_next(self) -> str:
        return "the experiment is ending" if self._flushing else "training goes on"

    def _restart_after_crash(self, lane: _Lane, exit_code: int | str) -> None:
        with self._lock:
            if self._stopping:
                return
            resent = len(lane.unanswered)
        number = self._lanes.index(lane) + 1
        if not resent:  # nothing in its hands: the next request starts a new one
            logger.warning("export worker %d %s; a new one starts with the next request.",
                           number, how_it_ended(exit_code))  # fmt: skip
            return
        logger.warning(
            "export worker %d %s; restarted, %d request(s) resent.",
            number,
            how_it_ended(exit_code),
            resent,
        )
        try:
            lane.deliver(None, self._lock)
        except Exception as error:  # this runs in the reply thread: nothing may escape it
            logger.debug("restart failed", exc_info=True)
            if isinstance(error, OSError | ValueError):  # the new one died in turn: its
                return  # end is told, and it restarted, when its own replies stop
            logger.error(
                "export worker %d could not be restarted (%s); the journal keeps its "
                "checkpoints for `rllib-mlflow sync`.",
                number,
                one_line(error),
            )


def _unreachable(error: Exception) -> None:
    """A worker that died breaks its pipe: its end is reported once, by `_restart_after_crash`
    when its replies stop; anything else is one line (the traceback at debug level)."""
    if not isinstance(error, OSError | ValueError | RuntimeError):  # a broken or closed pipe
        logger.warning("could not send to the export worker: %s", one_line(error))
    logger.debug("could not reach the export worker", exc_info=True)


def local_experiment_dir(trial) -> str:
    """The experiment directory when storage is local, else a local mirror of it."""
    storage = trial.storage
    if storage.storage_filesystem.type_name == "local":
        return storage.experiment_fs_path
    return str(Path("~/ray_results").expanduser() / storage.experiment_dir_name)
