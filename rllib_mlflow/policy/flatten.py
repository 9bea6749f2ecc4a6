"""RLlib's rule for flattening a Dict/Tuple observation into one float32 vector, with numpy.

RLlib's FlattenObservations connector calls `flatten_inputs_to_1d_tensor`, which walks the
observation with `tree.flatten`: the keys of every dict in **sorted** order (whatever order
the space lists them in; gymnasium keeps insertion order for keyword-built spaces), Tuple
parts in order, Discrete values one-hot (at the value itself: RLlib ignores `start`),
MultiDiscrete values one-hot per part, Box and MultiBinary values raveled. This is the only
place rllib-mlflow flattens observations: the policy, the served model, the evaluation and
the parity check all call it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RULE = (
    "RLlib's FlattenObservations: dict keys sorted at every level, Tuple parts in order, "
    "Discrete and MultiDiscrete one-hot, Box and MultiBinary raveled, as float32"
)


def flatten_observation(space: dict[str, Any], value: Any) -> np.ndarray:
    """One raw observation of `space` (described as in policy.json) as RLlib flattens it."""
    kind = space["type"]
    if kind in ("Box", "MultiBinary"):
        return np.asarray(value, dtype=np.float32).ravel()
    if kind == "Discrete":
        return _one_hot(value, space["n"])
    if kind == "MultiDiscrete":
        return np.concatenate([_one_hot(v, n) for v, n in zip(np.ravel(value), space["nvec"])])
    if kind == "Dict":
        parts = space["spaces"]
        return np.concatenate(
            [flatten_observation(parts[key], value[key]) for key in sorted(parts)]
        )
    if kind == "Tuple":
        return np.concatenate(
            [flatten_observation(sub, part) for sub, part in zip(space["spaces"], value)]
        )
    raise ValueError(f"Cannot flatten observations of space type {kind!r}.")


def flat_size(space: dict[str, Any]) -> int:
    """The length of `flatten_observation(space, ...)`."""
    kind = space["type"]
    if kind == "Box":
        return int(np.prod(space["shape"], dtype=np.int64))
    if kind == "MultiBinary":
        return int(np.prod(space["n"], dtype=np.int64))
    if kind == "Discrete":
        return int(space["n"])
    if kind == "MultiDiscrete":
        return int(np.sum(space["nvec"]))
    parts = space["spaces"].values() if kind == "Dict" else space["spaces"]
    return sum(flat_size(sub) for sub in parts)


def _one_hot(value: Any, n: int) -> np.ndarray:
    index = int(np.asarray(value).item())
    if not 0 <= index < n:
        raise ValueError(f"Discrete value {index} is outside 0..{n - 1}, which RLlib one-hots.")
    one_hot = np.zeros(n, np.float32)
    one_hot[index] = 1.0
    return one_hot
