"""Every message between the driver and the export worker survives the wire (JSON) as it was
sent, and a message the worker does not know is refused with a reason, not guessed at."""

from __future__ import annotations

import json

import pytest

from rllib_mlflow.mlflow.runs import TrialInfo
from rllib_mlflow.register.task import RegistrationSettings, RegistrationTask
from rllib_mlflow.tune import messages
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
    StartRun,
    UnknownMessage,
    WorkerExited,
    decode_reply,
    decode_request,
    encode_request,
)

TRIAL = TrialInfo("t0", "PPO_CartPole-v1_t0", "experiment")
TASK = RegistrationTask(
    settings=RegistrationSettings(
        registered_model_name="cartpole", formats=("onnx", "h5"), keep_last=3, video=True
    ),
    checkpoint="/staged/checkpoint_000002",
    checkpoint_uri="s3://bucket/exp/checkpoint_000002",
    training_iteration=2,
    metrics={"env_runners/episode_return_mean": 21.5},
    trial_id="t0",
    trial_name="PPO_CartPole-v1_t0",
    metrics_logged=True,
    tags={"team": "rl"},
)
REQUESTS = [
    Configure(
        tracking_uri="http://127.0.0.1:5000",
        experiment_name="sweep",
        tags={"team": "rl"},
        source="train.py",
        prewarm_formats=("onnx",),
    ),
    Configure(),
    StartRun(trial=TRIAL),
    LogParams(trial=TRIAL, params={"lr": "0.001"}),
    LogMetrics(trial=TRIAL, metrics={"loss": 0.5}, step=3, timestamp_ms=1_700_000_000_000),
    LogArtifacts(trial=TRIAL, path="/tmp/trial"),
    EndRun(trial=TRIAL, status="KILLED"),
    Register(trial=TRIAL, task=TASK),
]
REPLIES = [
    Done(),
    Done(node="node-1"),
    Registered(versions=[{"name": "cartpole", "version": "7"}]),
    Failed(error="ConnectionError: refused", node="node-2"),
    WorkerExited(exit=-9),
    WorkerExited(exit="Ray actor died (RayActorError)"),
]


def _over_the_wire(data: dict) -> dict:
    return json.loads(json.dumps(data))


def test_every_request_type_is_tested():
    assert {type(r) for r in REQUESTS} == set(messages.REQUESTS.values())
    assert {type(r) for r in REPLIES} == {Done, Registered, Failed, WorkerExited}


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_a_request_arrives_as_it_was_sent(request_):
    key, received = decode_request(_over_the_wire(encode_request(request_, key="k-1")))
    assert (key, received) == ("k-1", request_)
    assert type(request_).from_json(_over_the_wire(request_.to_json())) == request_


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: type(r).__name__)
def test_a_reply_arrives_as_it_was_sent(reply):
    assert decode_reply(_over_the_wire({"key": "k-1", **reply.to_json()})) == reply


def test_the_wire_format_is_the_one_workers_have_always_read():
    """A worker of the same install reads these; the journal and tests rely on the shapes."""
    wire = encode_request(LogMetrics(trial=TRIAL, metrics={"m": 1.0}, step=1), key="k")
    assert wire == {
        "op": "log_metrics",
        "key": "k",
        "trial": {
            "trial_id": "t0",
            "name": "PPO_CartPole-v1_t0",
            "experiment_dir_name": "experiment",
        },
        "metrics": {"m": 1.0},
        "step": 1,
        "timestamp_ms": None,
    }
    assert encode_request(Register(trial=TRIAL, task=TASK), "t0/2")["task"] == TASK.to_json()
    assert Done().to_json() == {"done": True}
    assert Failed(error="x").to_json() == {"error": "x"}


def test_an_unknown_op_is_refused_with_what_is_known():
    with pytest.raises(UnknownMessage, match=r"unknown op 'log_metric'.*log_metrics.*same version"):
        decode_request({"op": "log_metric", "key": "k", "trial": TRIAL.to_json()})
    with pytest.raises(UnknownMessage, match="unknown op None"):
        decode_request({"key": "k"})


def test_an_unknown_field_or_reply_is_refused():
    with pytest.raises(UnknownMessage, match=r"'end_run' has no field\(s\) \['stauts'\]"):
        decode_request({"op": "end_run", "trial": TRIAL.to_json(), "stauts": "KILLED"})
    with pytest.raises(UnknownMessage, match="unknown reply"):
        decode_reply({"key": "k", "finished": True})
