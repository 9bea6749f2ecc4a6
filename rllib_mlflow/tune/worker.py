"""The worker: a child process of the Tune driver that does all the MLflow work.

It keeps the trials' runs (params, metrics, artifacts, status) and exports and registers
checkpoints, so that the driver never imports mlflow, TensorFlow or torch and never
waits on a server. A separate process also because the Tune driver imported RLlib before
TensorFlow (which leaves TF in graph mode), and at the lowest CPU priority, so that
training keeps the cores and this work fills the idle moments. It is started with
`python -m rllib_mlflow.tune.worker` rather than multiprocessing, so that the user's training
script is never re-imported.

Protocol (the messages are `rllib_mlflow.tune.messages`): one JSON request per line on
stdin, handled in order; one JSON reply per request on stdout. The first request after each
start is `Configure` (no reply). Logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any

from rllib_mlflow import environment_variables as env
from rllib_mlflow.console import one_line
from rllib_mlflow.legacy_keras import ENVIRONMENT as LEGACY_KERAS
from rllib_mlflow.legacy_keras import use_legacy_keras
from rllib_mlflow.redaction import RedactingFilter, get_logger, redact_text
from rllib_mlflow.retries import with_retries
from rllib_mlflow.scratch import sweep_orphaned_exports
from rllib_mlflow.tune.messages import (
    Configure,
    Done,
    EndRun,
    Failed,
    LogArtifacts,
    LogMetrics,
    LogParams,
    Register,
    Registered,
    Reply,
    Request,
    StartRun,
    WorkerExited,
    decode_request,
)

if TYPE_CHECKING:
    from rllib_mlflow.mlflow.runs import TrialRuns

logger = get_logger(__name__)

# The callback's workers read what this training just wrote: its custom classes are the
# user's own code, which the driver runs too (see rllib/pickles.py for other checkpoints).
OWN_CHECKPOINTS = {env.RLLIB_MLFLOW_TRUSTED_MODULES.name: "*"}
# One thread each: exports are small, and training needs the cores.
THREAD_LIMITS = {
    "OMP_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
}


# Called with (the worker's handle, the key, the reply as received; see `messages`).
OnReply = Callable[[Any, str, dict[str, Any]], None]


def configure_message(settings: Configure | Mapping[str, Any]) -> Configure:
    """The `Configure` a handle sends each worker it starts, from itself or its fields."""
    return settings if isinstance(settings, Configure) else Configure.from_json(settings)


class WorkerProcess:
    """The driver's handle on the worker: submit messages, get called back with replies."""

    def __init__(self, on_reply: OnReply, settings: Configure | Mapping[str, Any]):
        self._on_reply = on_reply
        self._configure = configure_message(settings)
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def start(self) -> bool:
        """Start the worker unless it runs; True when this started one (which then knows
        none of the messages sent before)."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return False
            self._process = self._spawn()
            return True

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def submit(self, message: Mapping[str, Any]) -> None:
        """Send a request as `messages.encode_request` makes it to the running worker (see
        `start`); raises when there is none."""
        with self._lock:
            if self._process is None:
                raise RuntimeError("the export worker is not started")
            _send(self._process, message)

    def stop(self) -> None:
        with self._lock:
            process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # SIGTERM ends it before it runs another line; its exit (freeing TensorFlow and
            # torch takes a tenth of a second) need not hold up the end of `fit()`.
            process.terminate()
            threading.Thread(target=_kill_unless_gone, args=(process,), daemon=True).start()

    def _spawn(self) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "rllib_mlflow.tune.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={
                **os.environ,
                "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                **THREAD_LIMITS,
                **LEGACY_KERAS,  # old-stack TF policies are built here (see legacy_keras)
                **OWN_CHECKPOINTS,
            },
            # Its own process group, so that Ctrl-C reaches the driver only (it decides),
            # but not its own session: Linux's autogroup scheduling would give a new
            # session as much CPU as all of training, whatever its nice value.
            process_group=0,
        )
        _send(process, self._configure.to_json())
        threading.Thread(target=self._read_replies, args=(process,), daemon=True).start()
        return process

    def _read_replies(self, process: subprocess.Popen[str]) -> None:
        try:
            for line in _pipe(process.stdout):
                try:
                    reply = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self._on_reply(self, reply["key"], reply)
        except Exception as error:  # nothing may escape a thread (it would print a traceback)
            logger.warning("lost the export worker's replies: %s", one_line(error))
            logger.debug("reading replies failed", exc_info=True)
        try:
            self._on_reply(self, "", WorkerExited(exit=process.wait()).to_json())
        except Exception as error:
            logger.error("could not handle the export worker's exit: %s", one_line(error))
            logger.debug("handling the exit failed", exc_info=True)


def _kill_unless_gone(process: subprocess.Popen[str], timeout_s: float = 10) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()


def _send(process: subprocess.Popen[str], message: Mapping[str, Any]) -> None:
    stdin = _pipe(process.stdin)
    stdin.write(json.dumps(message, default=str) + "\n")
    stdin.flush()


def _pipe(stream: IO[str] | None) -> IO[str]:
    if stream is None:  # `_spawn` opens both pipes
        raise RuntimeError("the export worker's pipe is closed")
    return stream


class Session:
    """The worker's state: the configured tracking URI and the trials' runs."""

    def __init__(self) -> None:
        self.settings = Configure()
        self._runs: TrialRuns | None = None
        self._store_ready = False

    def reply(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        """`handle`, with a failure as a `Failed` reply (redacted): training goes on."""
        try:
            return self.handle(message)
        except Exception as error:
            return Failed(error=redact_text(f"{type(error).__name__}: {error}")).to_json()

    def handle(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        """The reply to one request as received (see `messages`), None for `Configure`."""
        _, request = decode_request(message)
        reply = self.answer(request)
        return None if reply is None else reply.to_json()

    def answer(self, request: Request) -> Reply | None:
        if isinstance(request, Configure):
            self.settings, self._runs, self._store_ready = request, None, False
            if request.prewarm_formats is not None:
                _prewarm(request.prewarm_formats)
            return None
        self._create_sqlite_tables_once()
        if isinstance(request, Register):
            from rllib_mlflow.register.registration import register_task

            run_id = with_retries(lambda: self.runs.run_id(request.trial))
            task = request.task.replace(run_id=run_id)
            uris = self.settings.tracking_uri, self.settings.registry_uri
            return Registered(versions=register_task(task, *uris))
        with_retries(lambda: self._carry_out(request))
        return Done()

    def _carry_out(
        self, request: StartRun | LogParams | LogMetrics | LogArtifacts | EndRun
    ) -> None:
        runs, trial = self.runs, request.trial
        match request:
            case StartRun():
                runs.start(trial)
            case LogParams(params=params):
                runs.log_params(trial, params)
            case LogMetrics(metrics=metrics, step=step, timestamp_ms=timestamp_ms):
                runs.log_metrics(trial, metrics, step, timestamp_ms)
            case LogArtifacts(path=path):
                runs.log_artifacts(trial, path)
            case EndRun(status=status):
                runs.end(trial, status)

    def _create_sqlite_tables_once(self) -> None:
        """Workers starting together on a new SQLite file would each create MLflow's tables
        in it and leave it half migrated ("table ... already exists"): the first creates
        them under a lock of this machine, the others then find them."""
        if self._store_ready:
            return
        self._store_ready = True
        from rllib_mlflow.locks import host_lock
        from rllib_mlflow.mlflow.client import client

        tracking = env.tracking_uri(self.settings.tracking_uri)
        for uri in {tracking, env.registry_uri(self.settings.registry_uri, tracking)}:
            if uri.startswith("sqlite:"):
                with host_lock("sqlite-tables", uri):
                    store = client(uri, uri)
                    store.search_experiments(max_results=1)
                    store.search_registered_models(max_results=1)

    @property
    def runs(self) -> TrialRuns:
        if self._runs is None:
            from rllib_mlflow.mlflow.client import client
            from rllib_mlflow.mlflow.runs import TrialRuns

            settings = self.settings
            self._runs = TrialRuns(
                client(settings.tracking_uri, settings.registry_uri),
                settings.experiment_name,
                settings.tags,
                experiment_id=settings.experiment_id,
                source=settings.source,
            )
        return self._runs


def _prewarm(formats: tuple[str, ...]) -> None:
    """Import what exporting needs now, while the trials start up, rather than when the
    first checkpoint comes and the cores are busy training (seconds of CPU otherwise)."""
    import importlib

    modules = ["rllib_mlflow.register.registration", "rllib_mlflow.mlflow.flavor"]
    if {"saved_model", "h5", "tflite", "tflite_int8"} & set(formats):  # see _tensorflow_first
        modules = ["rllib_mlflow.export.tensorflow", "rllib_mlflow.export.keras", *modules]
    modules += ["rllib_mlflow.export.onnx", "rllib_mlflow.export.parity", "ray.rllib.core"]
    # and what the first registration imported lazily (measured: 1.3 s of it, while training)
    modules += ["ray.rllib.algorithms", "torch.onnx", "onnx", "onnxruntime", "mlflow.pyfunc"]
    modules += ["rllib_mlflow.mlflow.card", "rllib_mlflow.play.replay"]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:  # the registration will say what is missing
            logger.debug("prewarm: %s", error)


def prepare_worker_process() -> None:
    """What a process doing export work sets up first (the worker process, or a Ray actor):
    one thread each, tf_keras as tf.keras (old-stack TF policies), quiet third-party logs,
    the lowest priority, redacted log records."""
    from rllib_mlflow.console import silence_third_party

    os.environ.update(THREAD_LIMITS)  # before TensorFlow or torch loads in this process
    use_legacy_keras()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    silence_third_party()  # before TensorFlow loads: its C++ logs would fill the user's console
    _lowest_priority()  # training comes first: this work fills the moments the cores are idle
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="rllib-mlflow: %(message)s")
    for handler in logging.getLogger().handlers:  # MLflow's and boto's records too
        handler.addFilter(RedactingFilter())


def _lowest_priority() -> None:
    """Nice 19, and Linux's SCHED_IDLE where there is one. Nice alone is not enough: Ray
    runs its workers, and so training, at nice 15, which leaves a nice-19 process about a
    third of a core it shares with them; a SCHED_IDLE one gets a few percent, and the kernel
    treats its core as free when training wakes up."""
    os.nice(19)
    if hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as error:  # e.g. a sandbox that forbids it: nice 19 still holds
            logger.debug("SCHED_IDLE refused: %s", error)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    prepare_worker_process()
    sweep_orphaned_exports()  # left by a worker killed mid-export (one is restarting now)
    replies = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    driver = os.getppid()
    session = Session()
    for line in sys.stdin:
        if os.getppid() != driver:
            # The driver died (e.g. SIGKILL) with tasks still in the pipe: stop, so that
            # `rllib-mlflow sync` is the only one registering what the journal holds.
            logger.info("the driver is gone; leaving the rest to `rllib-mlflow sync`.")
            return
        message = json.loads(line)
        reply = session.reply(message)
        if reply is None:
            continue
        try:
            replies.write(json.dumps({"key": message.get("key", ""), **reply}) + "\n")
            replies.flush()
        except BrokenPipeError:  # the driver died meanwhile; the journal has the task
            logger.info("the driver is gone; leaving the rest to `rllib-mlflow sync`.")
            return


if __name__ == "__main__":
    main()
