"""Gymnasium spaces to and from plain JSON, for policy.json.

gymnasium is imported only where a space is made or read: the light install has none, and
imports every module of the policy tier all the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import gymnasium as gym


def space_to_json(space: gym.Space) -> dict[str, Any]:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _finite_or_str(space.low),
            "high": _finite_or_str(space.high),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist()}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, gym.spaces.Dict):
        return {
            "type": "Dict",
            "spaces": {k: space_to_json(s) for k, s in space.spaces.items()},
        }
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(s) for s in space.spaces]}
    raise TypeError(f"Cannot describe space {space!r} in policy.json.")


def space_from_json(data: dict[str, Any]) -> gym.Space:
    import gymnasium as gym

    kind = data["type"]
    if kind == "Box":
        low = np.array(data["low"], dtype=np.float64)
        high = np.array(data["high"], dtype=np.float64)
        dtype = np.dtype(data["dtype"])  # gymnasium takes a dtype, typed as a scalar type
        return gym.spaces.Box(low, high, tuple(data["shape"]), dtype)  # pyright: ignore[reportArgumentType]
    if kind == "Discrete":
        return gym.spaces.Discrete(data["n"], start=data.get("start", 0))
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(data["nvec"])
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(data["n"])
    if kind == "Dict":
        return gym.spaces.Dict({k: space_from_json(s) for k, s in data["spaces"].items()})
    if kind == "Tuple":
        return gym.spaces.Tuple([space_from_json(s) for s in data["spaces"]])
    raise ValueError(f"Unknown space type {kind!r} in policy.json.")


def _finite_or_str(values: np.ndarray) -> list:
    # JSON has no infinity: write "inf"/"-inf", which np.array(..., float) reads back.
    flat = [float(v) if np.isfinite(v) else str(float(v)) for v in values.ravel()]
    return np.array(flat, dtype=object).reshape(values.shape).tolist()
