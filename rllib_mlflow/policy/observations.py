"""Raw observations as the exported graph takes them, with numpy alone.

A served model receives raw observations (a Dict observation as one dict, a list of them or
a dict of batches) and has neither gymnasium nor RLlib to flatten them: this does what
RLlib's FlattenObservations connector does, from the space as policy.json describes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .flatten import flatten_observation


class ObservationConverter:
    """Raw observations -> the named float32 arrays the exported graph takes.

    Box observations pass through. Dict observations come as one dict, a list of dicts or
    a dict of batched arrays; they are flattened as RLlib's FlattenObservations does
    (`flatten.flatten_observation`: keys sorted at every level, Discrete one-hot; already
    flattened arrays are taken as they are) or, for a module that reads the dict itself,
    fed one graph input per key. Discrete and MultiDiscrete observations (RLlib's old stack
    one-hots them) come as values, one or a batch, and are one-hot'ed; rows already one-hot
    are taken as they are when given as a 2-D batch [N, n]."""

    def __init__(self, metadata: dict[str, Any]):
        self.space = metadata["observation_space"]
        self.keys = metadata.get("observation_keys")
        inputs = metadata.get("inputs") or [
            {"name": "observations", "shape": metadata["input"]["shape"]}
        ]
        self.shapes = {i["name"]: tuple(i["shape"][1:]) for i in inputs}

    def feeds(self, observations: Any) -> dict[str, np.ndarray]:
        if self.space["type"] == "Dict" and (self.keys or _holds_dicts(observations)):
            columns = self._dict_columns(observations)
            if self.keys:
                return {key: self._batch(columns[key], key) for key in self.keys}
            rows = len(next(iter(columns.values())))
            flat = [
                flatten_observation(self.space, {k: v[i] for k, v in columns.items()})
                for i in range(rows)
            ]
            return {"observations": self._batch(flat, "observations")}
        if self.space["type"] in ("Discrete", "MultiDiscrete") and self._raw(observations):
            rows = np.asarray(observations).reshape(-1, *self._raw_shape())
            flat = [flatten_observation(self.space, row) for row in rows]
            return {"observations": self._batch(flat, "observations")}
        return {"observations": self._batch(observations, "observations")}

    def _raw_shape(self) -> tuple[int, ...]:
        return () if self.space["type"] == "Discrete" else (len(self.space["nvec"]),)

    def _raw(self, observations: Any) -> bool:
        """Whether Discrete/MultiDiscrete observations are raw values (one or a batch), not
        yet one-hot: a Discrete value is a scalar, so a batch of them is 1-D; one-hot rows
        are [N, n]. MultiDiscrete values have one entry per part, one-hot rows sum(nvec)."""
        shape = np.shape(observations)
        if self.space["type"] == "Discrete":
            return len(shape) <= 1
        return bool(shape) and shape[-1] == self._raw_shape()[0] != self.shapes["observations"][0]

    def _dict_columns(self, observations: Any) -> dict[str, list]:
        """One dict, a list of dicts or a dict of batched arrays -> {key: list of rows}."""
        keys = list(self.space["spaces"])
        if isinstance(observations, dict):
            missing = [k for k in keys if k not in observations]
            if missing:
                raise ValueError(f"Observation dict lacks key(s) {missing}; expected {keys}.")
            first = keys[0]
            single = np.ndim(observations[first]) == _rank(self.space["spaces"][first])
            if single:
                return {k: [observations[k]] for k in keys}
            return {k: list(observations[k]) for k in keys}
        if isinstance(observations, (list, tuple)) and observations:
            if all(isinstance(o, dict) for o in observations):
                return {k: [o[k] for o in observations] for k in keys}
        raise ValueError(
            f"Expected a Dict observation with keys {keys}: one dict, a non-empty list of "
            f"dicts, or a dict of batched arrays; got {type(observations).__name__}."
        )

    def _batch(self, observations: Any, name: str) -> np.ndarray:
        shape = self.shapes[name]
        try:
            batch = np.asarray(observations, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Observations must be numbers: {error}") from error
        if batch.shape == shape:
            batch = batch[None]
        if batch.shape[1:] != shape or batch.shape[0] == 0:
            raise ValueError(
                f"Expected a non-empty batch of {name} of shape {list(shape)}"
                f" (batch shape [N, {', '.join(map(str, shape))}]), got "
                f"{list(batch.shape)}."
            )
        if not np.all(np.isfinite(batch)):
            raise ValueError("Observations contain NaN or infinite values.")
        return batch


def _holds_dicts(observations: Any) -> bool:
    """A raw Dict observation, a list of them or a dict of batches (not flat arrays)."""
    if isinstance(observations, dict):
        return True
    return isinstance(observations, (list, tuple)) and any(
        isinstance(o, dict) for o in observations
    )


def _rank(space: dict[str, Any]) -> int:
    """The number of dimensions of one raw observation of `space`."""
    if space["type"] == "Box":
        return len(space["shape"])
    return 1 if space["type"] in ("MultiDiscrete", "MultiBinary") else 0


def served_observation_keys(metadata: dict[str, Any]) -> list[str] | None:
    """The keys of a Dict observation the served model takes one tensor each for (a Dict
    of Box, Discrete, MultiDiscrete and MultiBinary parts), else None."""
    space = metadata["observation_space"]
    if space["type"] != "Dict":
        return None
    simple = ("Box", "Discrete", "MultiDiscrete", "MultiBinary")
    if not all(sub["type"] in simple for sub in space["spaces"].values()):
        return None
    return list(space["spaces"])
