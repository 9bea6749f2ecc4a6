"""Raw observations as the exported graph takes them, with numpy alone.

A served model receives what the environment returns (a Discrete value, a Box of any shape,
a Dict or Tuple observation; one or a batch) and has neither gymnasium nor RLlib to prepare
it: this does what RLlib's FlattenObservations connector does (`flatten.py`), from the space
as policy.json describes it. Rows already flattened (or one-hot) are taken as they are, so
that clients written before raw observations were accepted keep working.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .flatten import flat_size, flatten_observation


class ObservationConverter:
    """Raw observations -> the named float32 arrays the exported graph takes.

    Box observations come as one or a batch, in the env's shape (or flattened when the graph
    takes them flat). Discrete values come as ints (any of [N], [N, 1], float or int),
    MultiDiscrete values as [N, len(nvec)]; both are one-hot'ed, one-hot rows pass. Dict
    observations come as one dict, a list of dicts or a dict of batches, Tuple observations
    as one tuple or a list of them; both are flattened by RLlib's rule or, for a module that
    reads the dict itself, fed one graph input per key."""

    def __init__(self, metadata: dict[str, Any]):
        self.space = metadata["observation_space"]
        self.keys = metadata.get("observation_keys")
        inputs = metadata.get("inputs") or [
            {"name": "observations", "shape": metadata["input"]["shape"]}
        ]
        self.shapes = {i["name"]: tuple(i["shape"][1:]) for i in inputs}

    def feeds(self, observations: Any) -> dict[str, np.ndarray]:
        if self.keys:
            columns = _dict_columns(self.space, observations)
            return {key: _checked(columns[key], self.shapes[key], key) for key in self.keys}
        return {"observations": self.rows(observations)}

    def rows(self, observations: Any) -> np.ndarray:
        """The batch of observations the graph's `observations` input takes."""
        shape, space = self.shapes["observations"], self.space
        kind = space["type"]
        if kind == "Box" and tuple(space["shape"]) == shape:  # the graph takes the raw Box
            return _checked(observations, shape, "observations", expected(space, shape))
        if kind in ("Dict", "Tuple") and _is_raw_structure(space, observations):
            return _checked(_structured_rows(space, observations), shape, "observations")
        if kind in ("Discrete", "MultiDiscrete"):
            return _checked(_one_hot_rows(space, observations, shape), shape, "observations")
        if kind in ("Box", "MultiBinary"):
            rows = _numbers(observations)
            raw = tuple(space["shape"] if kind == "Box" else np.ravel(space["n"]).tolist())
            if rows.shape == raw:
                rows = rows[None]
            if rows.ndim == len(raw) + 1 and rows.shape[1:] == raw:
                rows = rows.reshape(len(rows), -1)
            return _checked(rows, shape, "observations", expected(space, shape))
        return _checked(observations, shape, "observations", expected(space, shape))


def expected(space: dict[str, Any], shape: tuple[int, ...]) -> str:
    """What a batch of observations of `space` looks like, for error messages and docs;
    `shape`: one row of the graph's input (the flattened observation, if flattened)."""
    flat = f"[N, {', '.join(map(str, shape))}]"
    kind = space["type"]
    if kind == "Box" and tuple(space["shape"]) == shape:
        return f"expected shape {flat} (a batch of observations of shape {list(shape)})"
    if kind == "Discrete":
        return (
            f"expected shape [N] (a batch of Discrete({space['n']}) values, integers 0.."
            f"{space['n'] - 1}; [N, 1] works too) or one-hot rows {flat}"
        )
    if kind == "MultiDiscrete":
        return (
            f"expected shape [N, {len(space['nvec'])}] (a batch of MultiDiscrete("
            f"{space['nvec']}) values) or one-hot rows {flat}"
        )
    if kind in ("Box", "MultiBinary"):
        raw = list(space["shape"]) if kind == "Box" else np.ravel(space["n"]).tolist()
        dims = ", ".join(map(str, ["N", *raw]))
        return f"expected shape [{dims}] (a batch of {kind} observations) or flattened rows {flat}"
    if kind == "Dict":
        return (
            f"expected a dict with keys {list(space['spaces'])} (one observation or a batch "
            f"per key), a list of such dicts, or flattened rows {flat}"
        )
    return (
        f"expected one Tuple observation of {len(space['spaces'])} parts, a list of them, or "
        f"flattened rows {flat}"
    )


def _numbers(observations: Any) -> np.ndarray:
    try:
        return np.asarray(observations, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Observations must be numbers: {error}") from error


def _checked(observations: Any, shape: tuple, name: str, what: str | None = None) -> np.ndarray:
    """A non-empty float32 batch [N, *shape] of finite numbers, or a ValueError saying what
    was expected."""
    batch = _numbers(observations)
    if batch.shape == shape:
        batch = batch[None]
    what = what or f"expected shape [N, {', '.join(map(str, shape))}]"
    if batch.size == 0:
        raise ValueError(f"The batch of {name} is empty: send at least one; {what}.")
    if batch.shape[1:] != shape:
        raise ValueError(f"Input {name!r} has shape {list(batch.shape)}; {what}.")
    if not np.all(np.isfinite(batch)):
        raise ValueError("Observations contain NaN or infinite values.")
    return batch


def _one_hot_rows(space: dict[str, Any], observations: Any, shape: tuple) -> np.ndarray:
    """Discrete/MultiDiscrete values (one or a batch) one-hot, as RLlib's FlattenObservations
    does (per part); rows already one-hot [N, width] pass."""
    sent = values = _numbers(observations)
    parts = [space["n"]] if space["type"] == "Discrete" else list(space["nvec"])
    if values.ndim == 2 and values.shape[1] == shape[0] and shape[0] != len(parts):
        return values  # one-hot rows
    if space["type"] == "Discrete" and values.ndim <= 2 and values.shape[1:] in ((), (1,)):
        values = values.reshape(-1, 1)
    elif values.shape == (len(parts),):
        values = values[None]
    if values.size == 0:
        raise ValueError(
            f"The batch of observations is empty: send at least one; {expected(space, shape)}."
        )
    if values.ndim != 2 or values.shape[1] != len(parts):
        raise ValueError(
            f"Input 'observations' has shape {list(sent.shape)}; {expected(space, shape)}."
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("Observations contain NaN or infinite values.")
    index = values.astype(np.int64)
    bad = (index != values) | (index < 0) | (index >= np.asarray(parts))
    if np.any(bad):
        raise ValueError(
            f"{space['type']} observation value {values[bad][0]:g} is not one of the integers "
            f"RLlib one-hots ({_ranges(parts)})."
        )
    return np.concatenate(
        [np.eye(n, dtype=np.float32)[index[:, i]] for i, n in enumerate(parts)], 1
    )


def _ranges(parts: list[int]) -> str:
    return ", ".join(f"0..{n - 1}" for n in parts)


def _is_raw_structure(space: dict[str, Any], observations: Any) -> bool:
    """Whether Dict/Tuple observations are raw (dicts, tuples), not rows already flattened."""
    if isinstance(observations, dict) or _matches(space, observations):
        return True
    if isinstance(observations, (list, tuple)) and observations:
        return any(isinstance(o, (dict, list, tuple)) for o in observations) and not _flat_rows(
            observations, flat_size(space)
        )
    return False


def _flat_rows(observations: Any, width: int) -> bool:
    try:
        rows = np.asarray(observations, dtype=np.float32)
    except (TypeError, ValueError):
        return False
    return rows.shape[-1:] == (width,) and rows.ndim <= 2


def _structured_rows(space: dict[str, Any], observations: Any) -> list[np.ndarray]:
    """Raw Dict or Tuple observations (one, or a batch) flattened by RLlib's rule, per row."""
    if space["type"] == "Dict":
        columns = _dict_columns(space, observations)
        count = len(next(iter(columns.values())))
        rows = [{k: v[i] for k, v in columns.items()} for i in range(count)]
    else:
        rows = [observations] if _matches(space, observations) else list(observations)
        odd = [i for i, row in enumerate(rows) if not _matches(space, row)]
        if odd:
            raise ValueError(
                f"Observation {odd[0]} of the batch does not fit the Tuple space; "
                f"{expected(space, (flat_size(space),))}."
            )
    return [flatten_observation(space, row) for row in rows]


def _matches(space: dict[str, Any], value: Any) -> bool:
    """Whether `value` is one raw observation of `space` (not a batch of them)."""
    kind = space["type"]
    if kind == "Dict":
        return isinstance(value, dict) and all(
            k in value and _matches(s, value[k]) for k, s in space["spaces"].items()
        )
    if kind == "Tuple":
        parts = space["spaces"]
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(parts)
            and all(_matches(s, v) for s, v in zip(parts, value))
        )
    try:
        return np.ndim(value) == _rank(space)
    except ValueError:  # ragged
        return False


def _dict_columns(space: dict[str, Any], observations: Any) -> dict[str, list]:
    """One dict, a list of dicts or a dict of batched arrays -> {key: list of rows}."""
    keys = list(space["spaces"])
    if isinstance(observations, dict):
        missing = [k for k in keys if k not in observations]
        if missing:
            raise ValueError(f"Observation dict lacks key(s) {missing}; expected {keys}.")
        if _matches(space, observations):
            return {k: [observations[k]] for k in keys}
        columns = {k: list(observations[k]) for k in keys}
        if len({len(c) for c in columns.values()}) != 1:
            sizes = {k: len(c) for k, c in columns.items()}
            raise ValueError(f"The keys' batches differ in size: {sizes}; send one per key.")
        return columns
    if isinstance(observations, (list, tuple)) and observations:
        if all(isinstance(o, dict) for o in observations):
            lacking = [k for k in keys if any(k not in o for o in observations)]
            if lacking:
                raise ValueError(f"Observation dicts lack key(s) {lacking}; expected {keys}.")
            return {k: [o[k] for o in observations] for k in keys}
    raise ValueError(
        f"Expected a Dict observation with keys {keys}: one dict, a non-empty list of "
        f"dicts, or a dict of batched arrays; got {type(observations).__name__}."
    )


def _rank(space: dict[str, Any]) -> int:
    """The number of dimensions of one raw observation of `space`."""
    if space["type"] == "Box":
        return len(space["shape"])
    if space["type"] == "MultiBinary":
        return np.ndim(np.zeros(space["n"]))
    return 1 if space["type"] == "MultiDiscrete" else 0


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
