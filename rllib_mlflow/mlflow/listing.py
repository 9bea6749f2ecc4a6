"""The versions of a registered model as records: keys named like the version tags, lists
as lists, times in UTC ISO 8601. What `rllib-mlflow versions` prints, as a table or JSON."""

from __future__ import annotations

from typing import Any

from rllib_mlflow.console import utc_iso
from rllib_mlflow.mlflow import registry

_NUMBERS = {
    registry.TAG_ITERATION: int,
    "num_env_steps_sampled_lifetime": int,
    "episode_return_mean": float,
    "eval.episode_return_mean": float,
    "eval.episode_return_std": float,
    "eval.episodes": int,
    "parity_max_abs_diff": float,
}
_LISTS = ("formats",)
_COLUMNS = (
    "trial_name",
    "trial_id",
    "module_id",
    *_NUMBERS,
    "algorithm",
    "env_id",
    *_LISTS,
    "replay",
)


def version_records(mlflow_client, name: str) -> list[dict[str, Any]]:
    """One record per version of `name`, oldest first."""
    aliases: dict[str, list[str]] = {}
    for alias, number in mlflow_client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(number), []).append(alias)
    versions = sorted(registry.find_versions(mlflow_client, name), key=lambda v: int(v.version))
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
    return alias.startswith("iter-"), alias  # named aliases (best, prod) first


def _number(value: str, kind: type) -> int | float | str:
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        return value
