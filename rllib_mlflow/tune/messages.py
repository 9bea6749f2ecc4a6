"""The messages between the driver's lanes (`tune.dispatcher`, `tune.ray_worker`) and the
export worker (`tune.worker`): one frozen dataclass per request and per reply, so that both
sides build and read the same types, and a message the other side would not understand is
refused where it is made.

On the wire (JSON lines to a worker process, plain dicts to a Ray actor) a request is
``{"op": ..., "key": ..., **fields}``; the key names it in the replies and is the lane's
business, not the message's (`encode_request`, `decode_request`). The first request after
each start is `Configure`, which has no reply. A reply is ``{"key": ..., "done": true}``,
``{"key": ..., "versions": [...]}`` or ``{"key": ..., "error": ...}``, with ``"node"`` when
a Ray actor did the work; `WorkerExited` never crosses the wire: the driver's handle on a
worker reports it (`decode_reply`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from rllib_mlflow.mlflow.runs import TrialInfo
from rllib_mlflow.register.task import RegistrationTask


class UnknownMessage(ValueError):
    """A message that is none of this module's: a bug, or a driver and a worker from
    different versions of rllib-mlflow (a Ray cluster's nodes must all have the same)."""


# Fields whose JSON is not the value itself; every other field is JSON as it is.
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "trial": lambda data: TrialInfo(**data),
    "task": RegistrationTask.from_json,
    "prewarm_formats": lambda formats: None if formats is None else tuple(formats),
}


class _Request:
    """`to_json` and `from_json` for the dataclasses below, from their fields."""

    op: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # each is a dataclass

    def to_json(self) -> dict[str, Any]:
        fields = dataclasses.fields(self)
        return {"op": self.op, **{f.name: _encode(getattr(self, f.name)) for f in fields}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names - {"op", "key"}
        if unknown:
            raise UnknownMessage(f"{cls.op!r} has no field(s) {sorted(unknown)}: {_WHY}")
        values = {k: _DECODERS.get(k, _same)(v) for k, v in data.items() if k in names}
        return cls(**values)


def _encode(value: Any) -> Any:
    if isinstance(value, TrialInfo | RegistrationTask):
        return value.to_json()
    return list(value) if isinstance(value, tuple) else value


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, kw_only=True)
class Configure(_Request):
    """Where the runs go and what the worker imports ahead (no reply)."""

    op: ClassVar[str] = "configure"
    tracking_uri: str | None = None
    registry_uri: str | None = None
    experiment_name: str | None = None
    experiment_id: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the driver's script: MLflow's run context (source name, git commit)
    prewarm_formats: tuple[str, ...] | None = None  # None: nothing to export, import nothing


@dataclass(frozen=True, kw_only=True)
class StartRun(_Request):
    op: ClassVar[str] = "start_run"
    trial: TrialInfo


@dataclass(frozen=True, kw_only=True)
class LogParams(_Request):
    op: ClassVar[str] = "log_params"
    trial: TrialInfo
    params: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class LogMetrics(_Request):
    op: ClassVar[str] = "log_metrics"
    trial: TrialInfo
    metrics: dict[str, float]
    step: int
    # Stamped by the driver when the result came: right however far the worker lags, and
    # the same when the message is sent again after a crash (MLflow keeps one of the two).
    timestamp_ms: int | None = None


@dataclass(frozen=True, kw_only=True)
class LogArtifacts(_Request):
    op: ClassVar[str] = "log_artifacts"
    trial: TrialInfo
    path: str


@dataclass(frozen=True, kw_only=True)
class EndRun(_Request):
    op: ClassVar[str] = "end_run"
    trial: TrialInfo
    status: str  # FINISHED, FAILED or KILLED


@dataclass(frozen=True, kw_only=True)
class Register(_Request):
    """Export and register a checkpoint into the trial's run (the worker finds the run)."""

    op: ClassVar[str] = "register"
    trial: TrialInfo
    task: RegistrationTask


TrialRequest = StartRun | LogParams | LogMetrics | LogArtifacts | EndRun | Register
Request = Configure | TrialRequest
REQUESTS: dict[str, type[Request]] = {
    kind.op: kind
    for kind in (Configure, StartRun, LogParams, LogMetrics, LogArtifacts, EndRun, Register)
}
_WHY = "the driver and the worker must run the same version of rllib-mlflow."


def encode_request(request: Request, key: str = "") -> dict[str, Any]:
    """`request` as sent, under `key` (what its reply will name)."""
    return {**request.to_json(), "key": key}


def decode_request(data: Mapping[str, Any]) -> tuple[str, Request]:
    """The key and the request of a message as received; an unknown op is refused."""
    op = data.get("op")
    kind = REQUESTS.get(op) if isinstance(op, str) else None
    if kind is None:
        raise UnknownMessage(f"unknown op {op!r}; known: {', '.join(REQUESTS)}. {_WHY}")
    return str(data.get("key", "")), kind.from_json(data)


@dataclass(frozen=True, kw_only=True)
class Done:
    """A run's message was carried out."""

    node: str | None = None  # the Ray node that did the work, for `export_on="cluster"`

    def to_json(self) -> dict[str, Any]:
        return _with_node({"done": True}, self.node)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Done:
        return cls(node=data.get("node"))


@dataclass(frozen=True, kw_only=True)
class Registered:
    """A `Register` was carried out: the versions, as `{"name", "version"}`."""

    versions: list[dict[str, str]]
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _with_node({"versions": self.versions}, self.node)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Registered:
        return cls(versions=list(data["versions"]), node=data.get("node"))


@dataclass(frozen=True, kw_only=True)
class Failed:
    """A request failed (retries spent, or a permanent failure): why, redacted."""

    error: str
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _with_node({"error": self.error}, self.node)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Failed:
        return cls(error=str(data["error"]), node=data.get("node"))


@dataclass(frozen=True, kw_only=True)
class WorkerExited:
    """The worker is gone (its exit code, or why the actor died): resend what it did not
    answer to a new one. Reported by the driver's handle on the worker, under key ""."""

    exit: int | str

    def to_json(self) -> dict[str, Any]:
        return {"worker_exited": self.exit}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerExited:
        return cls(exit=data["worker_exited"])


Reply = Done | Registered | Failed | WorkerExited
# A reply is told by the one field it alone has (its wire format predates an "op").
_REPLIES: dict[str, type[Reply]] = {
    "done": Done,
    "versions": Registered,
    "error": Failed,
    "worker_exited": WorkerExited,
}


def decode_reply(data: Mapping[str, Any]) -> Reply:
    """The reply in `data` (its key, if any, is the caller's); an unknown one is refused."""
    for field_name, kind in _REPLIES.items():
        if field_name in data:
            return kind.from_json(data)
    raise UnknownMessage(f"unknown reply with field(s) {sorted(data)}. {_WHY}")


def _with_node(data: dict[str, Any], node: str | None) -> dict[str, Any]:
    return data if node is None else {**data, "node": node}
