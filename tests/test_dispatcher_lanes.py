"""A lane keeps its trial's messages in order across a worker crash, and sends none twice.

The worker here is scripted (it records what each worker it stands for was sent), so that
the crash can come at the moments that matter: before the driver hears of it, and after.
Real worker processes killed mid-sweep are in test_reliability.
"""

from __future__ import annotations

import time

import pytest

from rllib_mlflow.tune.dispatcher import ExportDispatcher

TRIAL = {"trial_id": "t0", "name": "trial-0", "experiment_dir_name": "e"}


class ScriptedWorker:
    """`WorkerProcess`'s interface; `sent` holds the keys each started worker was sent."""

    def __init__(self, on_reply, settings):
        self.on_reply = on_reply
        self.sent: list[list[str]] = []
        self.alive = False

    def start(self) -> bool:
        if self.alive:
            return False
        self.alive = True
        self.sent.append([])
        return True

    def submit(self, message) -> None:
        if not self.alive:
            raise BrokenPipeError("the worker is dead")
        self.sent[-1].append(message["key"])

    def stop(self) -> None:
        self.alive = False

    def crash(self) -> None:
        self.alive = False

    def report_crash(self) -> None:
        self.on_reply(self, "", {"worker_exited": -9})

    def answer(self, key: str) -> None:
        self.on_reply(self, key, {"done": True})


@pytest.fixture
def lane():
    workers: list[ScriptedWorker] = []

    def factory(on_reply, settings):
        workers.append(ScriptedWorker(on_reply, settings))
        return workers[-1]

    dispatcher = ExportDispatcher({}, workers=1, worker_factory=factory)
    dispatcher.flush_timeout_s = 5
    yield dispatcher, workers[0]
    dispatcher.flush()


def _send(dispatcher: ExportDispatcher, step: int) -> str:
    dispatcher.send("log_metrics", trial=TRIAL, metrics={"m": step}, step=step)
    return f"log_metrics-{step}"


def _wait_for(worker: ScriptedWorker, expected: list[list[str]]) -> None:
    deadline = time.monotonic() + 10
    while worker.sent != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.sent == expected


def test_a_message_sent_before_the_crash_is_heard_of_follows_the_unanswered(lane):
    dispatcher, worker = lane
    first, second = _send(dispatcher, 0), _send(dispatcher, 1)
    _wait_for(worker, [[first, second]])
    worker.crash()
    third = _send(dispatcher, 2)  # finds the worker dead and starts the next one
    _wait_for(worker, [[first, second], [first, second, third]])
    worker.report_crash()  # too late to resend anything: the new worker has it all
    time.sleep(0.2)
    assert worker.sent == [[first, second], [first, second, third]]
    for key in (first, second, third):
        worker.answer(key)
    assert not dispatcher._busy()


def test_after_a_reported_crash_the_new_worker_gets_the_unanswered_then_the_rest(lane):
    dispatcher, worker = lane
    first, second = _send(dispatcher, 0), _send(dispatcher, 1)
    _wait_for(worker, [[first, second]])
    worker.answer(first)
    worker.crash()
    worker.report_crash()
    _wait_for(worker, [[first, second], [second]])  # the answered one is not resent
    third = _send(dispatcher, 2)
    _wait_for(worker, [[first, second], [second, third]])
    for key in (second, third):
        worker.answer(key)
    assert not dispatcher._busy()


def test_metrics_sent_again_after_a_crash_are_logged_once(tmp_path):
    """A worker can die after logging a message's metrics but before its reply; the new
    worker gets the message again. The driver stamps the metrics' time, so the second
    logging is identical to the first, and MLflow keeps one."""
    from mlflow import MlflowClient

    from rllib_mlflow.tune.worker import Session

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    message = {"op": "log_metrics", "key": "k", "trial": TRIAL, "metrics": {"m": 1.5}, "step": 1}
    message["timestamp_ms"] = 1_700_000_000_000
    for _ in range(2):  # the first worker, then the one started after the crash
        session = Session()
        session.handle({"op": "configure", "tracking_uri": uri, "experiment_name": "e"})
        assert session.handle(message) == {"done": True}
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("e")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "m")
    assert [(m.step, m.value, m.timestamp) for m in history] == [(1, 1.5, 1_700_000_000_000)]
