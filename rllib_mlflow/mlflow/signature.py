"""The served model's signature and input example: what a client sends, as the env returns it.

The signature describes the raw observation (a Discrete value as an int, a Box in its own
shape, one tensor per key of a Dict), not the graph's flattened input. MLflow enforces a
tensor signature strictly (one rank, one dtype) and answers a mismatch (or an empty batch)
with its own text, while the policy takes more than one form of most observations (Discrete
values as [N] or [N, 1], ints or floats, one-hot rows, flattened rows) and answers a wrong
one by naming what it expected. So the signature is marked as MLflow marks one taken from a
model's type hints: MLflow shows it and leaves checking the input to the model
(`policy/pyfunc.py`), and its server then reads requests as `{"inputs": ...}` only.

Dict observations of simple parts (one tensor per key) are the exception: there the strict
signature is exactly what the policy takes, and MLflow also turns `{"instances": [...]}`
rows of observation dicts into those tensors, which clients (and the README) use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

from rllib_mlflow.policy.flatten import flatten_observation
from rllib_mlflow.policy.observations import served_observation_keys

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

_EXAMPLE_ROWS = 2
_INTEGER_SPACES = ("Discrete", "MultiDiscrete", "MultiBinary")


def policy_signature(policy: dict[str, Any]) -> ModelSignature:
    """Tensor signature: raw observations in (one tensor, or one per Dict key), actions out;
    a stateful policy's state as `state_<name>` tensors in and out; explore/seed as params."""
    from mlflow.models import ModelSignature

    rule = policy["action_rule"]
    discrete = rule["distribution"] in ("categorical", "multi_categorical")
    action_type = np.dtype(np.int64) if discrete else np.dtype(np.float32)
    inputs = _observation_specs(policy)
    outputs = [TensorSpec(action_type, (-1, *rule["action_shape"]), "actions")]
    if policy.get("stateful"):
        for name, width in _served_state(policy):
            inputs.append(TensorSpec(np.dtype(np.float32), (-1, width), f"state_{name}"))
            outputs.append(TensorSpec(np.dtype(np.float32), (-1, width), f"state_{name}"))
        if _reads_rewards(policy):
            inputs.append(TensorSpec(np.dtype(np.float32), (-1,), "prev_rewards"))
    signature = ModelSignature(
        inputs=Schema([*inputs]),  # a list of the union Schema takes
        outputs=Schema([*outputs]),
        params=ParamSchema(
            [
                ParamSpec("explore", "boolean", False),
                ParamSpec("seed", "long", None),
                ParamSpec("return_dist_inputs", "boolean", False),
            ]
        ),
    )
    # MLflow checks the input against a type-hint signature nowhere: the model does (see
    # the module's docstring). Written to the MLmodel as `is_signature_from_type_hint`.
    signature._is_signature_from_type_hint = checks_its_own_input(policy)
    return signature


def checks_its_own_input(policy: dict[str, Any]) -> bool:
    """Whether the served model, not MLflow, checks requests (all but simple Dicts)."""
    return served_observation_keys(policy) is None


def _observation_specs(policy: dict[str, Any]) -> list[TensorSpec]:
    keys = served_observation_keys(policy)
    if keys is None:
        name = "observations" if policy.get("stateful", False) else None
        return [_raw_spec(policy["observation_space"], _graph_shape(policy), name)]
    spaces = policy["observation_space"]["spaces"]
    return [_raw_spec(spaces[key], (), key) for key in keys]


def _raw_spec(space: dict[str, Any], graph_shape: tuple, name: str | None) -> TensorSpec:
    """One batch of raw observations of `space`; Dict and Tuple observations (which a
    tensor cannot describe) as RLlib flattens them, `graph_shape`."""
    kind = space["type"]
    if kind == "Box":
        return TensorSpec(np.dtype(np.float32), (-1, *space["shape"]), name)
    if kind == "Discrete":
        return TensorSpec(np.dtype(np.int64), (-1,), name)
    if kind == "MultiDiscrete":
        return TensorSpec(np.dtype(np.int64), (-1, len(space["nvec"])), name)
    if kind == "MultiBinary":
        return TensorSpec(np.dtype(np.int64), (-1, *np.ravel(space["n"]).tolist()), name)
    return TensorSpec(np.dtype(np.float32), (-1, *graph_shape), name)


def _graph_shape(policy: dict[str, Any]) -> tuple[int, ...]:
    inputs = policy.get("inputs") or [{"name": "observations", **policy["input"]}]
    (observations,) = [i for i in inputs if i["name"] == "observations"]
    return tuple(observations["shape"][1:])


def _served_state(policy: dict[str, Any]) -> list[tuple[str, int]]:
    """(name, width) of every state tensor: recurrent state, then history windows."""
    state = [(s["name"], s["shape"][1]) for s in policy.get("state", [])]
    return state + [(h["name"], h["width"]) for h in policy.get("history", [])]


def _initial_state(policy: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every state tensor at an episode's start, one row (as `Policy.initial_state`)."""
    values = {s["name"]: s["initial"] for s in policy.get("state", [])}
    for window in policy.get("history", []):
        values[window["name"]] = window.get("initial") or np.zeros(window["width"])
    return {name: np.asarray(value, np.float32) for name, value in values.items()}


def _reads_rewards(policy: dict[str, Any]) -> bool:
    return any(h["push"] == "reward" for h in policy.get("history", []))


def input_example(policy: dict[str, Any]):
    """Two raw observations, as the signature describes them (with the initial state, for
    a stateful policy)."""
    from rllib_mlflow.policy.spaces import space_from_json

    space = space_from_json(policy["observation_space"])
    space.seed(0)
    samples = [space.sample() for _ in range(_EXAMPLE_ROWS)]
    keys = served_observation_keys(policy)
    if keys is not None:
        parts = policy["observation_space"]["spaces"]
        example = {k: _batch(parts[k], [s[k] for s in samples]) for k in keys}
    elif policy["observation_space"]["type"] in ("Dict", "Tuple"):
        rows = [flatten_observation(policy["observation_space"], s) for s in samples]
        example = np.asarray(rows, dtype=np.float32)
    else:
        example = _batch(policy["observation_space"], samples)
    if not policy.get("stateful"):
        return example
    example = example if isinstance(example, dict) else {"observations": example}
    for name, initial in _initial_state(policy).items():
        example[f"state_{name}"] = np.tile(initial, (_EXAMPLE_ROWS, 1))
    if _reads_rewards(policy):
        example["prev_rewards"] = np.zeros(_EXAMPLE_ROWS, np.float32)
    return example


def _batch(space: dict[str, Any], samples: list) -> np.ndarray:
    """Raw samples of `space` as one batch of the signature's dtype (finite Box values)."""
    if space["type"] in _INTEGER_SPACES:
        return np.asarray(samples, dtype=np.int64)
    return np.clip(np.asarray(samples, dtype=np.float32), -1e3, 1e3)
