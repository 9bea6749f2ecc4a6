"""Which registered versions to keep, and deleting the rest.

A version is kept when it is among the `keep_last` newest versions (the last registered: the
highest version numbers, whatever their training iteration or trial), among the `keep_best`
best by the model's best metric, or holds an alias a person or a tool set (`best`,
`eval-best`, anything but the per-iteration `iter-N` aliases, which go with their version).
Everything else is deleted from the registry, and optionally its artifacts; the registered
model's card is then rewritten.

The plan reads the versions once, in pages by version number (over HTTP two at a time), and
keeps of each only what it decides by (number, iteration, score): tens of thousands of
versions fit in a few MB.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from rllib_mlflow import names
from rllib_mlflow.errors import RegistryError
from rllib_mlflow.mlflow import card
from rllib_mlflow.mlflow.client import registered_model, registry_writer
from rllib_mlflow.mlflow.registry_client import RegistryReader
from rllib_mlflow.mlflow.rest import RestClient
from rllib_mlflow.mlflow.sql_reader import SqlReader
from rllib_mlflow.mlflow.versions import iter_versions, iter_versions_in_parallel, logged_model_id

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

_ITERATION_ALIAS = re.compile(r"^iter-\d+$")


@dataclass(frozen=True)
class PrunedVersion:
    """What a prune keeps of a version: enough to decide, report and delete it."""

    version: str
    training_iteration: int | None
    score: float | None  # its value of the model's best metric
    mode: str  # the best metric's "max" or "min"
    model_id: str | None  # its LoggedModel


@dataclass(frozen=True)
class PrunePlan:
    keep: list[PrunedVersion]
    delete: list[PrunedVersion]
    reasons: dict[str, str]  # version -> why it is kept


def plan_prune(
    mlflow_client: RegistryReader,
    name: str,
    keep_last: int | None = None,
    keep_best: int | None = None,
) -> PrunePlan:
    """Decide, without changing anything, which versions of `name` a prune deletes."""
    if keep_last is None and keep_best is None:
        raise ValueError("Say what to keep: keep_last=N and/or keep_best=K.")
    for label, value in (("keep_last", keep_last), ("keep_best", keep_best)):
        if value is not None and value < 0:
            raise ValueError(f"{label} must be >= 0, not {value}.")
    model = registered_model(mlflow_client, name)
    if model is None:
        raise RegistryError(f"There is no registered model {name!r}: nothing to prune.")
    listed = _all_versions(mlflow_client, name)
    versions = [_pruned(v) for v in listed]
    aliases = _aliases(model)
    reasons: dict[str, str] = {}
    for version in versions:
        protected = [a for a in aliases.get(version.version, []) if not _ITERATION_ALIAS.match(a)]
        if protected:
            reasons[version.version] = f"alias {', '.join(sorted(protected))}"
    if keep_last:
        # The last registered, as the name says: a newer version of a lower iteration (a
        # second trial, a backfill) is kept before an older one of a higher iteration.
        newest = sorted(versions, key=lambda v: int(v.version), reverse=True)
        for version in newest[:keep_last]:
            reasons.setdefault(version.version, f"among the newest {keep_last}")
    if keep_best:
        scored = [v for v in versions if v.score is not None]
        mode = "min" if {v.mode for v in versions} == {"min"} else "max"
        scored.sort(key=lambda v: v.score or 0.0, reverse=(mode == "max"))  # none is None
        for version in scored[:keep_best]:
            reasons.setdefault(version.version, f"among the best {keep_best}")
    keep = [v for v in versions if v.version in reasons]
    delete = [v for v in versions if v.version not in reasons]
    return PrunePlan(keep, delete, reasons)


def prune(
    mlflow_client: RegistryReader,
    name: str,
    keep_last: int | None = None,
    keep_best: int | None = None,
    *,
    delete_artifacts: bool = False,
    dry_run: bool = False,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> PrunePlan:
    """Delete the versions outside the retention policy (nothing, with `dry_run`).

    `on_progress(done, total, what)` is called before the first and after each deletion."""
    plan = plan_prune(mlflow_client, name, keep_last, keep_best)
    if dry_run or not plan.delete:
        return plan
    mlflow_client = _deleting_client(mlflow_client)
    progress = on_progress or (lambda done, total, what: None)
    progress(0, len(plan.delete), "")
    writer = registry_writer(mlflow_client)  # MlflowClient's own reads every version per call
    for done, version in enumerate(plan.delete, start=1):
        writer.delete_model_version(name, version.version)
        if delete_artifacts:
            _delete_logged_model(mlflow_client, version)
        logger.info("Deleted %s version %s", name, version.version)
        progress(done, len(plan.delete), f"version {version.version}")
    try:
        card.publish_family_card(mlflow_client, name)
    except Exception as error:  # the versions are gone; a stale summary is not fatal
        logger.warning("Could not rewrite the card of %s: %s", name, error)
    return plan


def _deleting_client(mlflow_client: RegistryReader) -> MlflowClient:
    """Deleting needs MLflow's client (`stores.check`); our readers only read."""
    if isinstance(mlflow_client, (RestClient, SqlReader)):
        raise TypeError(
            f"prune deletes through MLflow's client, not a {type(mlflow_client).__name__}"
        )
    return cast("MlflowClient", mlflow_client)


def _all_versions(mlflow_client: RegistryReader, name: str) -> Iterator:
    """Newest first; over HTTP, two requests in flight (the server's listing is the cost)."""
    filters = [f"name = '{name}'"]
    if isinstance(mlflow_client, RestClient):
        return iter_versions_in_parallel(mlflow_client, filters)
    return iter_versions(mlflow_client, filters, newest_first=True)


def _aliases(model) -> dict[str, list[str]]:
    by_version: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    return by_version


def _pruned(version) -> PrunedVersion:
    tags = version.tags
    iteration = tags.get(names.VERSION_TAG_ITERATION)
    metric = tags.get(names.VERSION_TAG_BEST_METRIC)
    value = tags.get(names.metric_tag(metric)) if metric else None
    return PrunedVersion(
        version=str(version.version),
        training_iteration=None if iteration is None else int(iteration),
        score=None if value is None else float(value),
        mode=tags.get(names.VERSION_TAG_BEST_MODE, "max"),
        model_id=logged_model_id(version),
    )


def _delete_logged_model(mlflow_client: MlflowClient, version: PrunedVersion) -> None:
    """Delete the version's LoggedModel and its files (MLflow alone only soft-deletes)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    model_id = version.model_id
    if model_id is None:  # an older server's version: no LoggedModel behind it
        logger.warning("Version %s names no LoggedModel: no artifacts deleted", version.version)
        return
    try:
        location = mlflow_client.get_logged_model(model_id).artifact_location
        get_artifact_repository(location).delete_artifacts()
        mlflow_client.delete_logged_model(model_id)
    except Exception as error:  # the registry entry is gone; say what is left behind
        logger.warning("Could not delete the artifacts of model %s: %s", model_id, error)
