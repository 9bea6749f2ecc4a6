"""The versions of a registered model as records: keys named like the version tags, lists
as lists, times in UTC ISO 8601. What `rllib-mlflow versions` prints, as a table or JSON."""

from __future__ import annotations

from typing import Any

from rllib_mlflow import names
from rllib_mlflow.console import utc_iso
from rllib_mlflow.mlflow.versions import find_versions

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


def version_records(mlflow_client, name: str) -> list[dict[str, Any]]:
    """One record per version of `name`, oldest first."""
    aliases: dict[str, list[str]] = {}
    for alias, number in mlflow_client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(number), []).append(alias)
    versions = sorted(find_versions(mlflow_client, name), key=lambda v: int(v.version))
    return [_record(v, sorted(aliases.get(str(v.version), []), key=_alias_order)) for v in versions]


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
