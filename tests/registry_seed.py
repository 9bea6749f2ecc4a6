"""Seed a registered model with thousands of versions in seconds, straight in MLflow's SQL
database (SQLite or PostgreSQL), for the registry-scale test and benchmark.

Registering 10,000 real exports would take hours; what the scale tests measure is what the
registry does with the rows already there, so the rows are written the way MLflow's
`create_model_version` writes them (READY, stage None, the tags rllib-mlflow sets), and the
registered model is created through MLflow itself so that its schema and migrations are
MLflow's own. Nothing here is on a measured path.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

ENV_ID = "CartPole-v1"
ALGORITHM = "PPO"


@dataclass(frozen=True)
class Seeded:
    name: str
    count: int
    trials: tuple[str, ...]
    best_version: int  # the version with the highest metric.episode_return_mean
    returns: dict[int, float]  # version -> metric.episode_return_mean


def version_tags(iteration: int, trial_id: str, value: float) -> dict[str, str]:
    """The tags rllib-mlflow writes on a version (a tiny ONNX export's), for `iteration`."""
    return {
        "training_iteration": str(iteration),
        "module_id": "default_policy",
        "trial_id": trial_id,
        "trial_name": f"PPO_{ENV_ID}_{trial_id}",
        "algorithm": ALGORITHM,
        "env_id": ENV_ID,
        "checkpoint_uri": f"/tmp/ray_results/seed/{trial_id}/checkpoint_{iteration:06d}",
        "formats": "onnx",
        "parity_max_abs_diff": "1.2e-07",
        "ray_version": "2.60.0",
        "mlflow_version": "3.17.2",
        "rllib_mlflow_version": "0.1.0",
        "best_metric": "episode_return_mean",
        "best_mode": "max",
        "episode_return_mean": f"{value:.6g}",
        "metric.episode_return_mean": repr(value),
    }


def seed_versions(
    db_uri: str,
    name: str,
    count: int,
    *,
    trials: int = 1,
    iteration_aliases: bool = False,
    best_alias: bool = True,
    summary: bool = True,
    seed: int = 0,
) -> Seeded:
    """Add `count` versions to registered model `name` in the database `db_uri` (created
    through MLflow if missing): trial k's versions are iterations 1, 2, ... in turn.

    `iteration_aliases` also sets the `iter-N` aliases older rllib-mlflow releases set (one
    per iteration, on its last version); `best_alias` points `best` at the best version;
    `summary` writes the family summary a registration would have left on the last one
    (without it, the next registration counts the model once in full)."""
    import sqlalchemy
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=db_uri, registry_uri=db_uri)
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # seeding more versions into an existing model
    engine = sqlalchemy.create_engine(db_uri)
    rng = random.Random(seed)
    trial_ids = tuple(f"seed{k:04d}" for k in range(trials))
    with engine.begin() as connection:
        first = 1 + (
            connection.execute(
                sqlalchemy.text("SELECT MAX(version) FROM model_versions WHERE name = :n"),
                {"n": name},
            ).scalar()
            or 0
        )
        now = int(time.time() * 1000)
        rows, tags, returns, aliases = [], [], {}, {}
        for offset in range(count):
            number = first + offset
            trial = trial_ids[offset % trials]
            iteration = offset // trials + 1
            value = round(rng.uniform(0, 500), 3)
            returns[number] = value
            rows.append(_version_row(name, number, now + offset))
            tags += [
                {"key": k, "value": v, "name": name, "version": number}
                for k, v in version_tags(iteration, trial, value).items()
            ]
            aliases[f"iter-{iteration}"] = number
        if summary and first == 1:
            tags.append(_summary_tag(name, first + count - 1, tags))
        connection.execute(sqlalchemy.text(_INSERT_VERSION), rows)
        connection.execute(sqlalchemy.text(_INSERT_TAG), tags)
        best = max(returns, key=lambda number: (returns[number], -number))
        wanted = dict(aliases) if iteration_aliases else {}
        if best_alias:
            wanted["best"] = best
        for alias in wanted:
            connection.execute(
                sqlalchemy.text(
                    "DELETE FROM registered_model_aliases WHERE name = :n AND alias = :a"
                ),
                {"n": name, "a": alias},
            )
        if wanted:
            connection.execute(
                sqlalchemy.text(_INSERT_ALIAS),
                [{"alias": a, "version": v, "name": name} for a, v in wanted.items()],
            )
        if engine.dialect.name == "postgresql":
            # What autovacuum does soon after on a live database: without statistics on the
            # new rows the planner picks a nested loop for tag filters (seconds at 1,000).
            for table in ("model_versions", "model_version_tags", "registered_model_aliases"):
                connection.execute(sqlalchemy.text(f"ANALYZE {table}"))
    engine.dispose()
    return Seeded(name, count, trial_ids, best, returns)


def _summary_tag(name: str, last: int, tags: list[dict]) -> dict:
    """The `rllib_mlflow.family` tag of version `last`, counted from the seeded `tags`."""
    from types import SimpleNamespace

    from rllib_mlflow import names
    from rllib_mlflow.mlflow import family

    by_version: dict[int, dict[str, str]] = {}
    for tag in tags:
        by_version.setdefault(tag["version"], {})[tag["key"]] = tag["value"]
    versions = [SimpleNamespace(version=str(n), tags=t) for n, t in by_version.items()]
    value = family.summarize(versions).to_json()
    return {"key": names.VERSION_TAG_FAMILY, "value": value, "name": name, "version": last}


def _version_row(name: str, number: int, millis: int) -> dict:
    return {
        "name": name,
        "version": number,
        "creation_time": millis,
        "last_updated_time": millis,
        "source": f"models:/m-seed{number:08d}",
        "storage_location": f"/tmp/seeded-artifacts/{number}",
        "run_id": "0" * 32,
    }


_INSERT_VERSION = (
    "INSERT INTO model_versions (name, version, creation_time, last_updated_time, description, "
    "user_id, current_stage, source, run_id, status, status_message, run_link, "
    "storage_location) VALUES (:name, :version, :creation_time, :last_updated_time, NULL, "
    "NULL, 'None', :source, :run_id, 'READY', NULL, NULL, :storage_location)"
)
_INSERT_TAG = (
    'INSERT INTO model_version_tags ("key", value, name, version) '
    "VALUES (:key, :value, :name, :version)"
)
_INSERT_ALIAS = (
    "INSERT INTO registered_model_aliases (alias, version, name) VALUES (:alias, :version, :name)"
)
