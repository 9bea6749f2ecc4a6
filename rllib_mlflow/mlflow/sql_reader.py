"""The registry's reads straight from MLflow's tables, for the reading commands on a database.

On a SQLite or PostgreSQL store, MLflow's client costs seconds before and during a read:
`import mlflow` and its store take about 1.5 s, and its search loads every tag of every
version as an ORM object (about 0.5 ms a version, 5 s for a 10,000-version model), so
`versions --limit 20` would take over 2 s and `prune --dry-run` 6 s. `SqlReader` answers
the reads of `listing`, `retention` and `versions` like an MlflowClient, from the same rows,
in two plain queries a page (versions, then their tags).

It only reads, and only the tables and columns named here, which MLflow's migrations have
kept since 2.x; `sql_reader` returns None (the caller then uses MLflow's client, which names
a schema it needs upgraded) when a column is missing. It understands the filters rllib-mlflow
writes (`name = '...'`, `tags.KEY = '...'`, `version_number < N`, joined by AND) and refuses
any other, so that a new query cannot silently read the wrong versions.
"""

from __future__ import annotations

import re
from typing import Any

from rllib_mlflow.errors import TrackingError
from rllib_mlflow.mlflow.rest import ModelVersion, RegisteredModel, _Page
from rllib_mlflow.mlflow.transport import RestApiError
from rllib_mlflow.redaction import mask_urls

_DELETED = "Deleted_Internal"  # MLflow's stage of a version being deleted
_DEFAULT_WORKSPACE = "default"  # what a single-tenant store (not a server) reads and writes
_NEEDED = {
    "model_versions": ("name", "version", "creation_time", "current_stage", "source", "run_id"),
    "model_version_tags": ("name", "version", "key", "value"),
    "registered_model_aliases": ("name", "alias", "version"),
    "registered_models": ("name",),
}
_CLAUSE = re.compile(
    r"(?P<field>name|tags\.(?P<tag>[\w.\-]+)|tags\.`(?P<quoted>[^`]+)`)\s*=\s*'(?P<value>[^']*)'"
    r"|version_number\s*(?P<op><=|>=|<|>|=)\s*(?P<number>\d+)"
)
_AND = re.compile(r"\s+AND\s+", re.IGNORECASE)
_ORDER = re.compile(r"version_number(?:\s+(?P<direction>ASC|DESC))?", re.IGNORECASE)


def sql_reader(uri: str) -> SqlReader | None:
    """A SqlReader for a SQLite/PostgreSQL/MySQL store URI, None for anything else, when
    SQLAlchemy (full MLflow) is missing, or when the schema lacks a column read here."""
    if not re.match(r"^(sqlite|postgresql|mysql)(\+\w+)?://", uri):
        return None
    try:
        import sqlalchemy
        import sqlalchemy.exc
    except ImportError:  # the light install: the caller says what to install
        return None
    engine = sqlalchemy.create_engine(uri)
    try:
        columns = _columns(engine)
    except sqlalchemy.exc.SQLAlchemyError as error:
        engine.dispose()
        raise TrackingError(
            f"Cannot read {mask_urls(uri)} as an MLflow store ({type(error).__name__}: "
            f"{mask_urls(str(error).splitlines()[0])[:200]}). Check the URI and that the "
            "database is reachable."
        ) from error
    if any(not set(wanted) <= columns.get(table, set()) for table, wanted in _NEEDED.items()):
        engine.dispose()
        return None
    return SqlReader(uri, engine, workspaces="workspace" in columns["model_versions"])


def _columns(engine) -> dict[str, set[str]]:
    import sqlalchemy

    inspector = sqlalchemy.inspect(engine)
    tables = set(inspector.get_table_names())
    return {t: {c["name"] for c in inspector.get_columns(t)} for t in _NEEDED if t in tables}


class SqlReader:
    """MlflowClient's registry reads used by the listing commands, on MLflow's tables: a
    `registry_client.RegistryReader`."""

    def __init__(self, tracking_uri: str, engine, *, workspaces: bool):
        self.tracking_uri = tracking_uri
        self._engine = engine
        self._workspace = " AND {table}.workspace = :workspace" if workspaces else ""

    def search_model_versions(
        self,
        filter_string: str,
        max_results: int = 1000,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> _Page[ModelVersion]:
        if page_token is not None:
            raise ValueError("SqlReader pages by version number, not by token.")
        where, params = _where(filter_string)
        direction = _direction(order_by)
        rows = self._rows(
            "SELECT v.name, v.version, v.creation_time, v.source FROM model_versions v "
            f"WHERE v.current_stage != :deleted AND {where}{self._in('v')} "
            f"ORDER BY v.version {direction} LIMIT :limit",
            {**params, "deleted": _DELETED, "limit": int(max_results)},
        )
        versions = [
            ModelVersion(
                name=name,
                version=str(number),
                creation_timestamp=int(created or 0),
                source=source or "",
            )  # fmt: skip
            for name, number, created, source in rows
        ]
        self._add_tags(versions)
        self._add_aliases(versions)
        return _Page(versions, None)

    def get_registered_model(self, name: str) -> RegisteredModel:
        found = self._rows(
            f"SELECT name FROM registered_models WHERE name = :name{self._in('registered_models')}",
            {"name": name},
        )
        if not found:
            missing = f"Registered Model with name={name} not found"  # MLflow's words
            raise RestApiError(404, "RESOURCE_DOES_NOT_EXIST", missing)
        return self._registered_model(name)

    def _registered_model(self, name: str) -> RegisteredModel:
        aliases = self._rows(
            "SELECT alias, version FROM registered_model_aliases "
            f"WHERE name = :name{self._in('registered_model_aliases')}",
            {"name": name},
        )
        return RegisteredModel(name=name, aliases={alias: str(v) for alias, v in aliases})

    def search_registered_models(
        self, filter_string: str | None = None, max_results: int = 100
    ) -> _Page[RegisteredModel]:
        """Registered models by name (a query for each one's aliases: for short lists)."""
        where, params = ("1 = 1", {}) if not filter_string else _where(filter_string)
        if "t.key" in where or "v.version" in where:
            raise ValueError(f"SqlReader finds registered models by name only: {filter_string!r}")
        rows = self._rows(
            f"SELECT name FROM registered_models v WHERE {where}{self._in('v')} "
            "ORDER BY name LIMIT :limit",
            {**params, "limit": int(max_results)},
        )
        return _Page([self._registered_model(name) for (name,) in rows], None)

    def _add_tags(self, versions: list[ModelVersion]) -> None:
        for name, numbers, by_number in _grouped(versions):
            rows = self._rows(
                "SELECT version, key, value FROM model_version_tags "
                f"WHERE name = :name AND version IN ({numbers}){self._in('model_version_tags')}",
                {"name": name},
            )
            for number, key, value in rows:
                by_number[str(number)].tags[key] = value or ""

    def _add_aliases(self, versions: list[ModelVersion]) -> None:
        for name, numbers, by_number in _grouped(versions):
            rows = self._rows(
                "SELECT version, alias FROM registered_model_aliases "
                f"WHERE name = :name AND version IN ({numbers})"
                f"{self._in('registered_model_aliases')}",
                {"name": name},
            )
            for number, alias in rows:
                by_number[str(number)].aliases.append(alias)

    def _in(self, table: str) -> str:
        return self._workspace.format(table=table)

    def _rows(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        import sqlalchemy

        if self._workspace:
            params = {**params, "workspace": _DEFAULT_WORKSPACE}
        with self._engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sqlalchemy.text(sql), params)]


def _grouped(versions: list[ModelVersion]):
    """(name, "1,2,3", {"1": version, ...}) per registered model among `versions`; the
    numbers are ints formatted here, so inlining them is safe."""
    by_name: dict[str, dict[str, ModelVersion]] = {}
    for version in versions:
        by_name.setdefault(version.name, {})[version.version] = version
    for name, by_number in by_name.items():
        yield name, ",".join(str(int(n)) for n in by_number), by_number


def _where(filter_string: str) -> tuple[str, dict[str, Any]]:
    """MLflow's filter syntax, the part rllib-mlflow writes, as SQL on `model_versions v`."""
    clauses, params = [], {}
    for index, text in enumerate(_AND.split(filter_string.strip())):
        match = _CLAUSE.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"SqlReader does not read the filter {text!r} (in {filter_string!r}).")
        value = f"p{index}"
        if match["number"] is not None:
            clauses.append(f"v.version {match['op']} :{value}")
            params[value] = int(match["number"])
        elif match["field"] == "name":
            clauses.append(f"v.name = :{value}")
            params[value] = match["value"]
        else:
            key = f"k{index}"
            clauses.append(
                "EXISTS (SELECT 1 FROM model_version_tags t WHERE t.name = v.name AND "
                f"t.version = v.version AND t.key = :{key} AND t.value = :{value})"
            )
            params[key], params[value] = match["tag"] or match["quoted"], match["value"]
    return " AND ".join(clauses), params


def _direction(order_by: list[str] | None) -> str:
    match = _ORDER.fullmatch(order_by[0].strip()) if order_by and len(order_by) == 1 else None
    if match is None:
        raise ValueError(f"SqlReader orders by version_number only, not {order_by!r}.")
    return (match["direction"] or "ASC").upper()
