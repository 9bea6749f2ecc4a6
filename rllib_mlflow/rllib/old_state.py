"""An old-API-stack policy's state, whichever Ray 2.x wrote it, as plain data that this
Ray's `Policy.from_state` rebuilds with RLlib's own classes.

`policy_state.pkl` is read by `pickles.load`: its weights (torch: named arrays; TF2: a list
in variable order), its `policy_spec` (policy class by name, spaces in RLlib's serialized
form, the config) and its connectors' settings are plain data in every Ray 2.x release.
What is not (optimizer state, exploration state, callbacks, classes named in the config,
the StateBufferConnector's pickled episode states) is left out: inference needs none of it,
and each may be what an older Ray, or an attacker, left behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rllib_mlflow.errors import CheckpointError
from rllib_mlflow.rllib import pickles

# Connectors whose settings are a pickle of their own (RLlib cloudpickle.loads them).
_OPAQUE_CONNECTORS = {"StateBufferConnector"}


def read_policy_state(policy_dir: Path) -> dict[str, Any]:
    """The state of the policy checkpointed in `policy_dir`, for `Policy.from_state`."""
    path = policy_dir / "policy_state.pkl"
    state = pickles.load(path)
    spec = state.get("policy_spec") if isinstance(state, dict) else None
    if not isinstance(spec, dict) or "weights" not in state:
        raise CheckpointError(
            f"{path} holds no policy_spec and weights, as every old-API-stack policy "
            "checkpoint of Ray 2.x does. Pass the directory `algo.save()` or "
            "`policy.export_checkpoint()` wrote."
        )
    return {
        "policy_spec": {
            "policy_class": policy_class_name(spec.get("policy_class"), path),
            "observation_space": spec["observation_space"],
            "action_space": spec["action_space"],
            "config": plain(spec.get("config") or {}),
        },
        "weights": state["weights"],
        "global_timestep": int(state.get("global_timestep") or 0),
        "connector_configs": _connector_configs(state.get("connector_configs") or {}),
    }


def policy_class_name(policy_class: Any, path: Path) -> str:
    """RLlib's durable name of the policy class (e.g. "PPOTorchPolicy"): recorded as a name
    since Ray 2.1, or as the class itself by some releases."""
    if isinstance(policy_class, str):
        return policy_class
    if pickles.is_stand_in(policy_class):
        name = pickles.stand_in_name(policy_class).rpartition(".")[2]
        if name == "_make_skeleton_class" and len(policy_class.args) > 1:
            # A class made at runtime, pickled by value: the eager TF policies of
            # `build_tf_policy` (DQN's "DQNTFPolicy_eager_traced", SAC's); RLlib names them
            # without the eager suffixes and makes them eager again for framework="tf2".
            name = str(policy_class.args[1]).removesuffix("_traced").removesuffix("_eager")
        return name.removesuffix("_traced")
    raise CheckpointError(f"{path} names no policy class RLlib knows ({policy_class!r}).")


def plain(value: Any) -> Any:
    """`value` without what a StandIn replaced (a dict's entry, a list's item): RLlib's
    defaults take the place of the classes and functions an old config named."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if not pickles.is_stand_in(v)}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value if not pickles.is_stand_in(v))
    return value


def _connector_configs(configs: dict[str, Any]) -> dict[str, Any]:
    """The agent and action connector pipelines with plain settings only."""
    restored = {}
    for kind, pipeline in configs.items():
        name, connectors = pipeline
        restored[kind] = (
            name,
            [(c, None if c in _OPAQUE_CONNECTORS else plain(params)) for c, params in connectors],
        )
    return restored
