"""The versions of a registered model as records: keys named like the version tags, lists
as lists, times in UTC ISO 8601. What `rllib-mlflow versions` prints, as a table or JSON.

Newest first, in pages by version number: `--limit 20` reads 20 versions whatever the
count. A trial (and a single iteration) is filtered by the registry; an iteration range
and a metric condition are checked here, page by page, until `limit` records are found.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rllib_mlflow import names
from rllib_mlflow.console import utc_iso
from rllib_mlflow.mlflow.registry_client import RegistryReader
from rllib_mlflow.mlflow.versions import PAGE_SIZE, iter_versions

_NUMBERS = {
    names.VERSION_TAG_ITERATION: int,
    "num_env_steps_sampled_lifetime": int,
    "episode_return_mean": float,
    names.VERSION_TAG_EVAL_RETURN_MEAN: float,
    names.VERSION_TAG_EVAL_RETURN_STD: float,
    names.VERSION_TAG_EVAL_EPISODES: int,
    names.VERSION_TAG_PARITY: float,
    names.VERSION_TAG_INT8_AGREEMENT: float,
}
_LISTS = (names.VERSION_TAG_FORMATS,)
_COLUMNS = (
    names.VERSION_TAG_TRIAL_NAME,
    names.VERSION_TAG_TRIAL_ID,
    names.VERSION_TAG_MODULE_ID,
    *_NUMBERS,
    names.VERSION_TAG_ALGORITHM,
    names.VERSION_TAG_ENV_ID,
    *_LISTS,
    names.VERSION_TAG_REPLAY,
)


@dataclass(frozen=True)
class VersionQuery:
    """Which versions to list: the newest `limit` (None: all) of those matching the rest."""

    limit: int | None = None
    trial: str | None = None  # trial id or name
    iterations: tuple[int, int] | None = None  # inclusive
    condition: Condition | None = None


@dataclass(frozen=True)
class Condition:
    """`episode_return_mean>=400`: a version tag (or `metric.<name>`) compared to a number."""

    key: str
    op: str
    value: float

    def holds(self, tags: dict[str, str]) -> bool:
        raw = tags.get(self.key, tags.get(names.metric_tag(self.key)))
        try:
            return raw is not None and _OPERATORS[self.op](float(raw), self.value)
        except ValueError:
            return False


_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "=": operator.eq, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip
_CONDITION = re.compile(r"^\s*([\w.\-/]+)\s*(>=|<=|==|!=|=|>|<)\s*(-?[\d.]+(?:e-?\d+)?)\s*$")
_RANGE = re.compile(r"^\s*(\d+)\s*(?:[-:]|\.\.)?\s*(\d+)?\s*$")


def parse_condition(text: str) -> Condition:
    match = _CONDITION.match(text)
    if not match:
        raise ValueError(
            f"Cannot read the condition {text!r}: write a tag, a comparison and a number, "
            "e.g. 'episode_return_mean>=400' or 'eval.episode_return_mean>450'."
        )
    return Condition(match[1], match[2], float(match[3]))


def parse_iterations(text: str) -> tuple[int, int]:
    match = _RANGE.match(text)
    if not match:
        raise ValueError(
            f"Cannot read the iterations {text!r}: write N or FIRST-LAST, e.g. 100-200."
        )
    first, last = int(match[1]), int(match[2] or match[1])
    if last < first:
        raise ValueError(f"The iterations {text!r} end before they start: write {last}-{first}.")
    return first, last


def version_records(
    mlflow_client: RegistryReader, name: str, query: VersionQuery = VersionQuery(), *, model=None
) -> list[dict[str, Any]]:
    """One record per version of `name` that `query` selects, newest first (`model`: the
    registered model, when the caller has read it already)."""
    aliases: dict[str, list[str]] = {}
    model = model or mlflow_client.get_registered_model(name)
    for alias, number in model.aliases.items():
        aliases.setdefault(str(number), []).append(alias)
    records = []
    for version in _selected(mlflow_client, name, query):
        if query.limit is not None and len(records) >= query.limit:
            break
        records.append(
            _record(version, sorted(aliases.get(str(version.version), []), key=_alias_order))
        )
    return records


def _selected(mlflow_client: RegistryReader, name: str, query: VersionQuery) -> Iterator:
    filters = [f"name = '{name}'"]
    first, last = query.iterations or (None, None)
    if first is not None and first == last:
        filters.append(f"tags.{names.VERSION_TAG_ITERATION} = '{first}'")
    checked_here = query.condition is not None or first != last
    size = PAGE_SIZE if checked_here or not query.limit else min(query.limit, PAGE_SIZE)
    for version in _by_trial(mlflow_client, filters, query.trial, size):
        if _outside(_iteration(version), query.iterations):
            continue
        if query.condition is None or query.condition.holds(version.tags):
            yield version


def _outside(iteration: int | None, bounds: tuple[int, int] | None) -> bool:
    """Whether an iteration falls outside `bounds` (inclusive; None: no bounds)."""
    return bounds is not None and (iteration is None or not bounds[0] <= iteration <= bounds[1])


def _by_trial(
    mlflow_client: RegistryReader, filters: list[str], trial: str | None, size: int
) -> Iterator:
    """The versions of `trial` (an id, else a name), or of every trial."""
    if trial is None:
        return iter_versions(mlflow_client, filters, newest_first=True, page_size=size)
    for tag in (names.VERSION_TAG_TRIAL_ID, names.VERSION_TAG_TRIAL_NAME):
        versions = iter_versions(
            mlflow_client, [*filters, f"tags.{tag} = '{trial}'"], newest_first=True, page_size=size
        )
        head = next(versions, None)
        if head is not None:
            return _chain(head, versions)
    return iter(())


def _chain(head, rest: Iterator) -> Iterator:
    yield head
    yield from rest


def _iteration(version) -> int | None:
    try:
        return int(version.tags[names.VERSION_TAG_ITERATION])
    except (KeyError, ValueError):
        return None


def _record(version, aliases: list[str]) -> dict[str, Any]:
    tags = version.tags
    record: dict[str, Any] = {"version": int(version.version), "aliases": aliases}
    for key in _COLUMNS:
        value = tags.get(key)
        if value is not None and key in _NUMBERS:
            value = _number(value, _NUMBERS[key])
        elif key in _LISTS:
            value = [v for v in (value or "").split(",") if v]
        record[key] = value
    record["created"] = utc_iso(version.creation_timestamp)
    return record


def _alias_order(alias: str) -> tuple[bool, str]:
    return alias.startswith(names.ITERATION_ALIAS_PREFIX), alias  # named aliases (best, prod) first


def _number(value: str, kind: type) -> int | float | str:
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        return value
