"""`rllib-mlflow register --workers N`: N checkpoints registered at a time, each in a process
of its own (an export is CPU-bound TensorFlow and torch work, which threads would share one
interpreter for).

Not the callback's export workers (`tune.worker` behind `tune.dispatcher`), whose promises
do not fit a backfill: they keep each trial's messages in order on one worker, so an archive
of one folder (one run) would be registered by one of them; they journal into an
experiment's journal, which an archive has not; and they run at idle priority beneath
training, which a backfill has none of. So a `concurrent.futures` pool, of spawned
processes: forking a parent that imported TensorFlow or torch, or holds threads, is unsafe.
A task fails on its own (its cause comes back as a line of text, which always unpickles);
only a process that dies takes the tasks the pool still held down with it, each reported.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed

from rllib_mlflow._logging import PREFIX_FORMAT
from rllib_mlflow.console import one_line
from rllib_mlflow.register.task import RegistrationTask
from rllib_mlflow.tune.worker import THREAD_LIMITS

# The versions registered ({"name", "version"} each), or why the task failed (one line).
Outcome = list[dict[str, str]] | str
# Registers one task against a tracking URI: a module-level function (the pool pickles it).
Registrar = Callable[[RegistrationTask, str | None], list[dict[str, str]]]


def attempt(register: Registrar, task: RegistrationTask, tracking_uri: str | None) -> Outcome:
    """`register(task, tracking_uri)`, or the one-line cause of its failure."""
    try:
        return register(task, tracking_uri)
    except Exception as error:
        return one_line(error)


def registered_in_processes(
    tasks: list[RegistrationTask],
    register: Registrar,
    tracking_uri: str | None,
    workers: int,
) -> Iterator[tuple[RegistrationTask, Outcome]]:
    """Each of `tasks` with its outcome, as they finish, `workers` at a time."""
    level = logging.getLogger("rllib_mlflow").getEffectiveLevel()
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_prepare_process,
        initargs=(_threads_each(workers), level),
    )
    try:
        futures: dict[Future[Outcome], RegistrationTask] = {
            pool.submit(attempt, register, task, tracking_uri): task for task in tasks
        }
        for future in as_completed(futures):
            yield futures[future], _outcome(future)
    finally:  # on Ctrl-C too: what has not started never starts
        pool.shutdown(wait=True, cancel_futures=True)


def _outcome(future: Future[Outcome]) -> Outcome:
    try:
        return future.result()
    except Exception as error:  # the process died (e.g. out of memory): the pool is broken
        return f"its registration process died ({one_line(error)}); register it again."


def _threads_each(workers: int) -> int:
    """The cores shared out: N processes each running TensorFlow's and torch's default
    thread pools (one thread per core) would oversubscribe the machine N times."""
    return max(1, (os.cpu_count() or workers) // workers)


def _prepare_process(threads: int, level: int) -> None:
    """Set up a spawned process as the command's own: thread pools sized before TensorFlow
    or torch load, tf_keras for old-stack TF policies, quiet third-party logs, and our
    messages on stderr (warnings only unless -v: the parent's progress bar is there)."""
    from rllib_mlflow.console import silence_third_party
    from rllib_mlflow.legacy_keras import use_legacy_keras

    os.environ.update({name: str(threads) for name in THREAD_LIMITS})
    use_legacy_keras()
    silence_third_party()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(PREFIX_FORMAT))
    package = logging.getLogger("rllib_mlflow")
    package.handlers[:] = [handler]
    package.setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    package.propagate = False
