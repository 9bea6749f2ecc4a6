"""An export worker as a Ray actor, for `export_on="cluster"`: the same `Session` as the
worker process, so the MLflow work is identical, but on whichever node of the cluster Ray
picks, so that exports scale with the cluster rather than with the driver's cores.

The actor asks for no CPU (a trial never waits for it), runs one call at a time in the
order they were submitted (so a trial's registrations stay in order), and lowers its own
priority as the worker process does: training keeps the cores. Each new actor goes to the
alive node with the fewest of them: Ray's "SPREAD" strategy does not spread actors that ask
for no resources (measured: 3 of 4 on the same node of two), and taking the nodes in turn
put both on one node when the second node joined after the first actor started. It is not
restarted by Ray: when it dies, `RayWorker` reports `worker_exited`, and the `ExportDispatcher`
starts a new actor and resends it what was not answered.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rllib_mlflow.legacy_keras import ENVIRONMENT as LEGACY_KERAS
from rllib_mlflow.redaction import get_logger, redact_text
from rllib_mlflow.tune.messages import (
    Configure,
    Failed,
    Register,
    WorkerExited,
    decode_request,
    encode_request,
)
from rllib_mlflow.tune.worker import (
    OWN_CHECKPOINTS,
    OnReply,
    Session,
    configure_message,
    prepare_worker_process,
)

logger = get_logger(__name__)


class ExportActor:
    """Runs in the actor's own process on some node; replies say which node did the work."""

    def __init__(self, configure: Mapping[str, Any]):
        prepare_worker_process()
        self._node = ray.get_runtime_context().get_node_id()
        self._session = Session()
        self._session.handle(configure)

    def handle(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        reply = self._session.reply(_readable_here(message))
        return None if reply is None else {**reply, "node": self._node}


def _readable_here(message: Mapping[str, Any]) -> Mapping[str, Any]:
    """Read the checkpoint itself when the driver's staged copy is not on this node (cloud
    storage: the copy is on the driver's disk); `sync` falls back the same way."""
    key, request = decode_request(message)
    if not isinstance(request, Register):
        return message
    task = request.task
    if "://" in task.checkpoint or Path(task.checkpoint).exists():
        return message
    moved = replace(request, task=task.replace(checkpoint=task.checkpoint_uri))
    return encode_request(moved, key)


_RemoteExportActor = ray.remote(ExportActor)
_actors_per_node: Counter[str] = Counter()  # started by this driver, to spread new ones


def _next_node() -> NodeAffinitySchedulingStrategy | str:
    """The alive node with the fewest of our actors. Not a soft affinity: Ray then moved an
    actor meant for a head node whose CPUs the trials held (no CPU asked or not) to the
    other node, half of the time. If the node dies first, the actor's creation fails, which
    reports `worker_exited`, and the next actor goes to an alive node."""
    alive = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
    if not alive:
        return "DEFAULT"
    node = min(alive, key=lambda node_id: _actors_per_node[node_id])
    _actors_per_node[node] += 1
    return NodeAffinitySchedulingStrategy(node, soft=False)


class RayWorker:
    """The driver's handle on one export actor, with `WorkerProcess`'s interface: submit
    messages, get called back with each reply in order, and with `worker_exited` when the
    actor dies."""

    def __init__(self, on_reply: OnReply, settings: Configure | Mapping[str, Any]):
        self._on_reply = on_reply
        self._configure = configure_message(settings)
        self._actor: ActorHandle[ExportActor] | None = None
        self._generation = 0  # which actor a pending call went to; a new one after each death
        self._pending: queue.Queue = queue.Queue()  # (generation, key, result ref), in order
        self._lock = threading.Lock()
        self._waiter: threading.Thread | None = None

    def start(self) -> bool:
        """Start an actor unless one runs; True when this started one (see `WorkerProcess`)."""
        with self._lock:
            if self._actor is not None:
                return False
            self._start_actor()
            return True

    def submit(self, message: Mapping[str, Any]) -> None:
        """Send a request as `messages.encode_request` makes it to the running actor (see
        `start`); raises when there is none."""
        with self._lock:
            if self._actor is None:
                raise RuntimeError("the export actor is not started")
            ref = self._actor.handle.remote(message)
            self._pending.put((self._generation, message["key"], ref))

    def stop(self) -> None:
        with self._lock:
            actor, self._actor = self._actor, None
        if actor is not None and ray.is_initialized():
            ray.kill(actor, no_restart=True)

    def _start_actor(self) -> None:
        if not ray.is_initialized():
            raise RuntimeError(
                'export_on="cluster" runs exports as Ray actors, and Ray is not initialized '
                'here; run under Tune (which starts Ray), or pass export_on="driver".'
            )
        self._generation += 1
        actor = _RemoteExportActor.options(
            num_cpus=0,  # never takes a CPU a trial could use
            max_concurrency=1,  # one call at a time, in submission order
            max_restarts=0,  # a restart would lose the calls queued on it; we resend them
            scheduling_strategy=_next_node(),
            # Set when its process starts, not only in __init__: a worker process Ray reuses
            # may have loaded TensorFlow, and tf.keras is chosen once (see legacy_keras).
            runtime_env={"env_vars": LEGACY_KERAS | OWN_CHECKPOINTS},
        ).remote(self._configure.to_json())
        # Ray's stubs say "handle or class" (ActorProxy), so that method calls type-check on
        # either; what `.remote` makes is the handle.
        self._actor = cast("ActorHandle[ExportActor]", actor)
        if self._waiter is None:
            self._waiter = threading.Thread(
                target=self._wait_for_replies, name="rllib-mlflow-ray-replies", daemon=True
            )
            self._waiter.start()

    def _wait_for_replies(self) -> None:
        reported_dead = 0  # the last generation whose death was reported
        while True:
            generation, key, ref = self._pending.get()
            try:
                reply: dict[str, Any] | None = ray.get(ref)
            except RayActorError as error:
                if generation <= reported_dead:
                    continue  # died with the actor already reported; the dispatcher resends it
                reported_dead = generation
                self._forget_actor(generation)
                died = WorkerExited(exit=f"Ray actor died ({type(error).__name__})")
                reply, key = died.to_json(), ""
            except Exception as error:  # e.g. Ray shut down under us
                reply = Failed(error=redact_text(f"{type(error).__name__}: {error}")).to_json()
            if reply is None:
                continue
            try:
                self._on_reply(self, key, reply)
            except Exception:  # e.g. the resend could not start a new actor
                logger.warning("could not handle the export actor's reply", exc_info=True)

    def _forget_actor(self, generation: int) -> None:
        """Drop a dead actor, so that the next `start` starts a new one."""
        with self._lock:
            actor = self._actor if self._generation == generation else None
            if actor is not None:
                self._actor = None
        if actor is not None:  # unreachable rather than dead: it must not work on meanwhile
            ray.kill(actor, no_restart=True)
