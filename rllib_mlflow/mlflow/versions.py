"""Registered versions: finding them by URI, alias or tags, and moving their aliases.

Each registered version is one checkpoint of one module of one trial, identified by the
version tags `trial_id`, `training_iteration` and `module_id`. Aliases:

- `best` points at the version with the best `best_metric` so far (default
  `episode_return_mean`, max). It only moves on strict improvement.
- `iter-N` points at the most recently registered version for training iteration N.
  When several trials feed one registered model, `iter-N` is therefore the last trial to
  reach iteration N; `find_version(name, training_iteration=N, trial=...)` picks a given
  trial's version, and without `trial` it refuses to guess and lists the trials.

Every function takes an `MlflowClient` or our `RestClient`, so lookups work without
`import mlflow` against an HTTP server.
"""

from __future__ import annotations

import re
from typing import Any

from rllib_mlflow import names
from rllib_mlflow.errors import RegistryError
from rllib_mlflow.mlflow.client import client, client_errors

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+))?/?$")


def find_versions(
    mlflow_client,
    name: str,
    *,
    training_iteration: int | None = None,
    trial: str | None = None,
    module_id: str | None = None,
) -> list:
    """Registered versions of `name` matching the given tags, newest first."""
    filters = [f"name = '{name}'"]
    if training_iteration is not None:
        filters.append(f"tags.{names.VERSION_TAG_ITERATION} = '{int(training_iteration)}'")
    if module_id is not None:
        filters.append(f"tags.{names.VERSION_TAG_MODULE_ID} = '{module_id}'")
    versions = _search_all(mlflow_client, " AND ".join(filters))
    if trial is not None:
        versions = [
            v
            for v in versions
            if trial
            in (v.tags.get(names.VERSION_TAG_TRIAL_ID), v.tags.get(names.VERSION_TAG_TRIAL_NAME))
        ]
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def find_version(
    model: str,
    *,
    training_iteration: int | None = None,
    trial: str | None = None,
    tracking_uri: str | None = None,
):
    """The ModelVersion named by a models:/ URI, or by a name plus training iteration."""
    return resolve_version(
        client(tracking_uri), model, training_iteration=training_iteration, trial=trial
    )


def resolve_version(
    mlflow_client, model: str, *, training_iteration: int | None, trial: str | None
):
    """`find_version` with a given client (ours over REST, or MLflow's)."""
    match = _MODEL_URI.match(model)
    name = match.group("name") if match else model
    if match and match.group("version"):
        return _get_version(mlflow_client, name, match.group("version"))
    if match and match.group("alias"):
        return _get_alias(mlflow_client, name, match.group("alias"))
    if training_iteration is None:
        raise RegistryError(
            f"Say which version of {name!r}: 'models:/{name}/<version>', "
            f"'models:/{name}@best', or training_iteration=N."
        )
    matches = find_versions(mlflow_client, name, training_iteration=training_iteration, trial=trial)
    if not matches:
        raise RegistryError(
            f"{name!r} has no version for training_iteration={training_iteration}"
            f"{f' and trial {trial!r}' if trial else ''}. Registered iterations: "
            f"{_registered_iterations(mlflow_client, name)}."
        )
    trials = {v.tags.get(names.VERSION_TAG_TRIAL_ID) for v in matches}
    if len(trials) > 1:
        raise RegistryError(
            f"Several trials registered training_iteration={training_iteration} in {name!r}: "
            f"{sorted(t or '' for t in trials)}. Pass trial=<trial id or name>."
        )
    return matches[0]


def version_tags(**tags: Any) -> dict[str, str]:
    """Version tags as MLflow stores them: strings, with empty values dropped."""
    return {k: str(v) for k, v in tags.items() if v is not None and v != ""}


def set_iteration_alias(mlflow_client, name: str, version) -> None:
    iteration = version.tags.get(names.VERSION_TAG_ITERATION)
    if iteration is not None:
        mlflow_client.set_registered_model_alias(
            name, names.iteration_alias(int(iteration)), version.version
        )


def update_best_alias(mlflow_client, name: str, metric: str, mode: str) -> str | None:
    """Point `best` at the version with the best `metric` tag, when it strictly improves on
    the current `best`; returns the version `best` points at.

    Recomputed from the registry and re-checked after each move, so that processes (or
    hosts) registering at once cannot leave `best` on a version another one has beaten."""
    current = None
    for _ in range(5):
        candidate = _best_version(find_versions(mlflow_client, name), metric, mode)
        current = _alias_or_none(mlflow_client, name, names.ALIAS_BEST)
        if candidate is None or not _beats(candidate, current, metric, mode):
            break
        mlflow_client.set_registered_model_alias(name, names.ALIAS_BEST, candidate.version)
    return None if current is None else str(current.version)


def _best_version(versions: list, metric: str, mode: str):
    """The version with the best `metric.<metric>` tag; the oldest among equals."""
    scored = [(v, _metric_value(v, metric)) for v in versions]
    scored = [(v, value) for v, value in scored if value is not None]
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda item: (sign * item[1], -int(item[0].version)))[0]


def _beats(candidate, current, metric: str, mode: str) -> bool:
    if current is None:
        return True
    if str(current.version) == str(candidate.version):
        return False
    best = _metric_value(current, metric)
    return best is None or _improves(_metric_value(candidate, metric), best, mode)


def _metric_value(version, metric: str) -> float | None:
    try:
        return float(version.tags[names.metric_tag(metric)])
    except (KeyError, TypeError, ValueError):
        return None


def _improves(value: float, best: float, mode: str) -> bool:
    return value > best if mode == "max" else value < best


def _alias_or_none(mlflow_client, name: str, alias: str):
    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except client_errors(mlflow_client):
        return None


def _get_version(mlflow_client, name: str, version: str):
    try:
        return mlflow_client.get_model_version(name, version)
    except client_errors(mlflow_client) as error:
        raise RegistryError(
            f"{name!r} has no version {version}. Existing versions: "
            f"{_existing_versions(mlflow_client, name)}."
        ) from error


def _get_alias(mlflow_client, name: str, alias: str):
    version = _alias_or_none(mlflow_client, name, alias)
    if version is None:
        aliases = _existing_aliases(mlflow_client, name)
        raise RegistryError(f"{name!r} has no alias {alias!r}. Existing aliases: {aliases}.")
    return version


def _search_all(mlflow_client, filter_string: str) -> list:
    versions, token = [], None
    while True:
        page = mlflow_client.search_model_versions(
            filter_string, max_results=1000, page_token=token
        )
        versions.extend(page)
        token = page.token
        if not token:
            return versions


def _existing_versions(mlflow_client, name: str) -> list[int]:
    try:
        return sorted(int(v.version) for v in _search_all(mlflow_client, f"name = '{name}'"))
    except Exception:
        return []


def _existing_aliases(mlflow_client, name: str) -> list[str]:
    try:
        return sorted(mlflow_client.get_registered_model(name).aliases)
    except Exception:
        return []


def _registered_iterations(mlflow_client, name: str) -> list[int]:
    versions = _search_all(mlflow_client, f"name = '{name}'")
    tag = names.VERSION_TAG_ITERATION
    return sorted({int(v.tags[tag]) for v in versions if tag in v.tags})


def logged_model_id(version) -> str | None:
    """The LoggedModel behind a version (older servers leave `model_id` empty)."""
    source = str(getattr(version, "source", "") or "")
    return getattr(version, "model_id", None) or source.removeprefix("models:/") or None
