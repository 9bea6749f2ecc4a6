"""Registered versions: finding them by URI, alias or tags, listing them in pages, and
moving `best`.

Each registered version is one checkpoint of one module of one trial, identified by the
version tags `trial_id`, `training_iteration` and `module_id`. Aliases:

- `best` points at the version with the best `best_metric` so far (default
  `episode_return_mean`, max). It only moves on strict improvement.
- `models:/NAME@iter-N` names the most recently registered version of training iteration N.
  It is resolved through the `training_iteration` tag, not stored as an alias: one alias
  per version would make every `get_registered_model` (which MLflow's own client calls
  inside most writes) load thousands of aliases. Registries written by older releases
  still hold `iter-N` aliases; they resolve the same way. When several trials feed one
  registered model, `iter-N` is the last trial to reach iteration N;
  `find_version(name, training_iteration=N, trial=...)` picks a given trial's version, and
  without `trial` it refuses to guess and lists the trials.

Listings page by version number (`version_number > last`), never by offset: a version
updated while a listing runs (another registration's card) is seen exactly once.

Every function takes an `MlflowClient` or our `RestClient`, so lookups work without
`import mlflow` against an HTTP server.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from rllib_mlflow import names
from rllib_mlflow.errors import RegistryError
from rllib_mlflow.mlflow.client import client, client_errors, registry_writer
from rllib_mlflow.mlflow.registry_client import (
    ModelVersionInfo,
    Page,
    RegistryClient,
    RegistryReader,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+))?/?$")
_ITERATION_ALIAS = re.compile(rf"^{names.ITERATION_ALIAS_PREFIX}(?P<iteration>\d+)$")
PAGE_SIZE = 1000
# After moving `best`, the versions re-checked for one another process registered meanwhile
# (and may have lost to our write): far more than registrations in flight at once.
BEST_RECHECK_WINDOW = 100


def find_versions(
    mlflow_client: RegistryClient,
    name: str,
    *,
    training_iteration: int | None = None,
    trial: str | None = None,
    module_id: str | None = None,
) -> list:
    """Registered versions of `name` matching the given tags, newest first.

    With `training_iteration`, only it goes to the registry: the few versions of one
    iteration are found by one tag, where the module (and often the trial) is the same on
    every version, and a registry filter on it would weigh them all."""
    filters = [_name_filter(name)]
    if training_iteration is not None:
        filters.append(f"tags.{names.VERSION_TAG_ITERATION} = '{int(training_iteration)}'")
    elif module_id is not None:
        filters.append(f"tags.{names.VERSION_TAG_MODULE_ID} = '{module_id}'")
    versions = [
        v
        for v in iter_versions(mlflow_client, filters)
        if module_id is None or v.tags.get(names.VERSION_TAG_MODULE_ID) == module_id
    ]
    if trial is not None:  # "": the versions of no trial (log_checkpoint outside Tune)
        versions = [v for v in versions if trial in _trial_names(v)]
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def iter_versions(
    mlflow_client: RegistryReader,
    filters: list[str],
    *,
    newest_first: bool = False,
    page_size: int = PAGE_SIZE,
) -> Iterator:
    """The versions matching all of `filters` (MLflow's filter syntax, e.g. `name = 'x'`),
    each once, in version order: one page in memory at a time, paged by version number so
    that versions created or updated meanwhile neither repeat nor shift a page."""
    order, beyond = ("DESC", "<") if newest_first else ("ASC", ">")
    last = None
    while True:
        bound = [] if last is None else [f"version_number {beyond} {last}"]
        page = mlflow_client.search_model_versions(
            " AND ".join([*filters, *bound]),
            max_results=page_size,
            order_by=[f"version_number {order}"],
        )
        yield from page
        if len(page) < page_size:
            return
        last = int(page[-1].version)


def iter_versions_in_parallel(
    mlflow_client: RegistryClient,
    filters: list[str],
    *,
    workers: int = 2,
    page_size: int = PAGE_SIZE,
) -> Iterator:
    """`iter_versions(..., newest_first=True)` of a whole listing (a prune's plan) with
    `workers` requests in flight: a tracking server answers on several processes, and its
    listing costs it about half a millisecond a version, so two halve a 10,000-version read.
    Each request is a range of `page_size` version numbers, so it holds at most one page;
    versions registered after the listing starts are not in it, as with `iter_versions`."""
    from concurrent.futures import ThreadPoolExecutor

    newest = mlflow_client.search_model_versions(
        " AND ".join(filters), max_results=1, order_by=["version_number DESC"]
    )
    if not newest:
        return

    def numbered(top: int) -> Page[ModelVersionInfo]:
        bounds = [f"version_number <= {top}", f"version_number > {top - page_size}"]
        return mlflow_client.search_model_versions(
            " AND ".join([*filters, *bounds]),
            max_results=page_size,
            order_by=["version_number DESC"],
        )

    tops = range(int(newest[0].version), 0, -page_size)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for top in tops:
            pending.append(pool.submit(numbered, top))
            if len(pending) >= workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def newest_versions(mlflow_client: RegistryClient, name: str, count: int) -> list:
    """The `count` highest-numbered versions of `name`, newest first (one query)."""
    return list(
        mlflow_client.search_model_versions(
            _name_filter(name), max_results=count, order_by=["version_number DESC"]
        )
    )


def _name_filter(name: str) -> str:
    return f"name = '{name}'"


def find_version(
    model: str,
    *,
    training_iteration: int | None = None,
    trial: str | None = None,
    tracking_uri: str | None = None,
) -> ModelVersion:
    """The ModelVersion named by a models:/ URI, or by a name plus training iteration."""
    version = resolve_version(
        client(tracking_uri), model, training_iteration=training_iteration, trial=trial
    )
    return cast("ModelVersion", version)  # MlflowClient's versions are MLflow's own


def resolve_version(
    mlflow_client: RegistryClient, model: str, *, training_iteration: int | None, trial: str | None
) -> ModelVersionInfo:
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
            f"{sorted(t or '' for t in trials)}. Pass trial=<trial id or name> (trial='' for "
            "the version registered outside Tune)."
        )
    return matches[0]


def _trial_names(version) -> tuple[str, str]:
    """The trial id and name a version is picked by; '' for a version of no trial."""
    tags = version.tags
    trial_id = tags.get(names.VERSION_TAG_TRIAL_ID) or ""
    return trial_id, tags.get(names.VERSION_TAG_TRIAL_NAME) or trial_id


def version_tags(**tags: Any) -> dict[str, str]:
    """Version tags as MLflow stores them: strings, with empty values dropped."""
    return {k: str(v) for k, v in tags.items() if v is not None and v != ""}


def update_best_alias(
    mlflow_client: MlflowClient, name: str, version, metric: str, mode: str
) -> str | None:
    """Point `best` at `version` (just registered) when its `metric` tag strictly improves
    on the current `best`'s; returns the version `best` points at.

    One alias read and a comparison: nothing lists the versions, unless `best` moves. Then
    the newest versions are re-checked, so that processes (or hosts) registering at once
    cannot leave `best` on a version another one has beaten: whoever writes `best` last
    re-checks after writing. Without a `best` yet (a new model, or one whose alias was
    deleted), the newest versions are the candidates."""
    current = _alias_or_none(mlflow_client, name, names.ALIAS_BEST)
    candidate = (
        version if current is not None else _best_of_newest(mlflow_client, name, metric, mode)
    )
    writer = registry_writer(mlflow_client)
    for _ in range(5):
        if candidate is None or not _beats(candidate, current, metric, mode):
            break
        writer.set_registered_model_alias(name, names.ALIAS_BEST, str(candidate.version))
        candidate = _best_of_newest(mlflow_client, name, metric, mode)
        current = _alias_or_none(mlflow_client, name, names.ALIAS_BEST)
    return None if current is None else str(current.version)


def _best_of_newest(mlflow_client: RegistryClient, name: str, metric: str, mode: str):
    return _best_version(newest_versions(mlflow_client, name, BEST_RECHECK_WINDOW), metric, mode)


def _best_version(versions: list, metric: str, mode: str):
    """The version with the best `metric.<metric>` tag; the oldest among equals."""
    scored = [(v, _metric_value(v, metric)) for v in versions]
    scored = [(v, value) for v, value in scored if value is not None]
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda item: (sign * item[1], -int(item[0].version)))[0]


def _beats(candidate, current, metric: str, mode: str) -> bool:
    value = _metric_value(candidate, metric)
    if value is None:
        return False
    if current is None:
        return True
    if str(current.version) == str(candidate.version):
        return False
    best = _metric_value(current, metric)
    return best is None or _improves(value, best, mode)


def _metric_value(version, metric: str) -> float | None:
    try:
        return float(version.tags[names.metric_tag(metric)])
    except (KeyError, TypeError, ValueError):
        return None


def _improves(value: float, best: float, mode: str) -> bool:
    return value > best if mode == "max" else value < best


def _alias_or_none(mlflow_client: RegistryClient, name: str, alias: str):
    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except client_errors(mlflow_client):
        return None


def _get_version(mlflow_client: RegistryClient, name: str, version: str):
    try:
        return mlflow_client.get_model_version(name, version)
    except client_errors(mlflow_client) as error:
        raise RegistryError(
            f"{name!r} has no version {version}. Existing versions: "
            f"{_existing_versions(mlflow_client, name)}."
        ) from error


def _get_alias(mlflow_client: RegistryClient, name: str, alias: str):
    iteration = _ITERATION_ALIAS.match(alias)
    version = None
    if iteration:  # the newest version of that iteration, from its tag
        found = find_versions(mlflow_client, name, training_iteration=int(iteration["iteration"]))
        version = found[0] if found else None
    if version is None:  # a real alias (also an `iter-N` an older release set)
        version = _alias_or_none(mlflow_client, name, alias)
    if version is None:
        aliases = _existing_aliases(mlflow_client, name)
        raise RegistryError(f"{name!r} has no alias {alias!r}. Existing aliases: {aliases}.")
    return version


def _existing_versions(mlflow_client: RegistryClient, name: str) -> list[int]:
    try:
        newest = newest_versions(mlflow_client, name, PAGE_SIZE)
        return sorted(int(v.version) for v in newest)
    except Exception:
        return []


def _existing_aliases(mlflow_client: RegistryClient, name: str) -> list[str]:
    try:
        return sorted(mlflow_client.get_registered_model(name).aliases)
    except Exception:
        return []


def _registered_iterations(mlflow_client: RegistryClient, name: str) -> str:
    """For an error message: the iterations of the newest versions (a listing of all of
    them costs about a millisecond per version)."""
    versions = newest_versions(mlflow_client, name, PAGE_SIZE)
    tag = names.VERSION_TAG_ITERATION
    found = sorted({int(v.tags[tag]) for v in versions if tag in v.tags})
    return f"{found}{' (of the newest 1,000 versions)' if len(versions) >= PAGE_SIZE else ''}"


def logged_model_id(version) -> str | None:
    """The LoggedModel behind a version (older servers leave `model_id` empty)."""
    source = str(getattr(version, "source", "") or "")
    return getattr(version, "model_id", None) or source.removeprefix("models:/") or None
