"""A registered model with thousands of versions (seeded in SQLite, tests/registry_seed.py):
a registration queries the same whatever the count and lists nothing; a listing that pages
while versions are registered and updated sees each version once; `versions` and `prune`
page; a registry of an older release (one `iter-N` alias per version) still resolves and
prunes. Timings are benchmarks/registry_scale.py's business, not these tests'."""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
from contextlib import contextmanager

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.store.model_registry.dbmodels.models import SqlModelVersion
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

from rllib_mlflow import log_checkpoint, names
from rllib_mlflow.cli import cli
from rllib_mlflow.mlflow import family
from rllib_mlflow.mlflow.listing import VersionQuery, parse_condition, version_records
from rllib_mlflow.mlflow.retention import plan_prune
from rllib_mlflow.mlflow.sql_reader import SqlReader, sql_reader
from rllib_mlflow.mlflow.versions import find_version, iter_versions
from tests.mlflow_server import start_tracking_server
from tests.registry_seed import seed_versions

MODEL = "scale"
SEEDED = 2000


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory):
    """A SQLite store with SEEDED versions of MODEL from 4 trials (copied per test)."""
    path = tmp_path_factory.mktemp("scale") / "seeded.db"
    seeded = seed_versions(f"sqlite:///{path}", MODEL, SEEDED, trials=4)
    return path, seeded


@pytest.fixture
def store(seeded_db, tmp_path):
    path, seeded = seeded_db
    copy = tmp_path / "mlflow.db"
    shutil.copy(path, copy)
    uri = f"sqlite:///{copy}"
    return uri, MlflowClient(tracking_uri=uri, registry_uri=uri), seeded


@contextmanager
def registry_reads():
    """What the registry store is asked meanwhile: its calls by name, and how many model
    versions its queries load (every ModelVersion row MLflow's ORM builds)."""
    calls: collections.Counter = collections.Counter()
    loaded = collections.Counter()
    original = {}
    for method in ("get_registered_model", "search_registered_models", "get_latest_versions",
                   "search_model_versions", "update_registered_model"):  # fmt: skip
        original[method] = getattr(SqlAlchemyStore, method)

        def spy(self, *args, _name=method, **kwargs):
            filter_string = kwargs.get("filter_string", args[0] if args else None)
            # Searching registered models by a name no model has computes nothing (the
            # reachability probe); by one that exists, its latest versions: O(versions).
            probe = _name == "search_registered_models" and "access-probe" in str(filter_string)
            calls["probe" if probe else _name] += 1
            return original[_name](self, *args, **kwargs)

        setattr(SqlAlchemyStore, method, spy)
    from sqlalchemy import event

    def on_load(target, context):
        loaded["versions"] += 1

    event.listen(SqlModelVersion, "load", on_load)
    try:
        yield calls, loaded
    finally:
        event.remove(SqlModelVersion, "load", on_load)
        for method, function in original.items():
            setattr(SqlAlchemyStore, method, function)


def _register(checkpoint: str, uri: str, iteration: int, value: float):
    (version,) = log_checkpoint(
        checkpoint, MODEL, training_iteration=iteration, trial_id="live", formats=["onnx"],
        tracking_uri=uri, verify=False,
        metrics={"env_runners": {"episode_return_mean": value}},
    )  # fmt: skip
    return version


@pytest.mark.slow
def test_a_registration_reads_the_same_at_200_and_at_2000_versions(trained_checkpoint, tmp_path):
    checkpoint = trained_checkpoint("ppo_cartpole").path
    reads = {}
    for count in (200, SEEDED):
        uri = f"sqlite:///{tmp_path}/at-{count}.db"
        seeded = seed_versions(uri, MODEL, count)
        _register(checkpoint, uri, count + 1, 1.0)  # warm: imports, the run
        with registry_reads() as (calls, loaded):
            version = _register(checkpoint, uri, count + 2, 1000.0)  # beats all: `best` moves
        reads[count] = (dict(calls), loaded["versions"])
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        assert client.get_model_version_by_alias(MODEL, "best").version == version.version
        created_with = family.Summary.from_json(version.tags[names.VERSION_TAG_FAMILY])
        assert (created_with.count, created_with.through) == (count + 1, count + 1)
        summary = family.through(client, MODEL, version)
        assert (summary.count, summary.trials) == (count + 2, ("seed0000", "live"))
        assert summary.iterations == (1, count + 2)
        assert seeded.best_version < int(version.version)
    assert reads[200] == reads[SEEDED], reads  # the same queries, the same rows
    calls, loaded = reads[SEEDED]
    assert "get_registered_model" not in calls and "search_registered_models" not in calls
    assert "get_latest_versions" not in calls and "update_registered_model" not in calls
    # The newest 100 re-checked after `best` moved, the newest 20 twice for the family
    # summary (before creating and after), and the versions of the key and their cards.
    assert loaded <= 160, reads


@pytest.mark.slow
def test_a_listing_paging_while_versions_change_sees_each_once(store, trained_checkpoint):
    uri, client, seeded = store
    checkpoint = trained_checkpoint("ppo_cartpole").path
    listing = iter_versions(client, [f"name = '{MODEL}'"], page_size=300)
    seen = [next(listing) for _ in range(300)]  # the first page
    # Meanwhile: versions not listed yet and listed already are updated (what a card or an
    # evaluation does; offset paging by last update time would move them), and a
    # registration adds one.
    for number in (5, 150, 301, 302, 1200, SEEDED):
        client.set_model_version_tag(MODEL, str(number), "touched", "1")
        client.update_model_version(MODEL, str(number), description="updated mid-listing")
    added = _register(checkpoint, uri, 5000, 1.0)
    seen += list(listing)
    numbers = [int(v.version) for v in seen]
    assert len(numbers) == len(set(numbers)), collections.Counter(numbers).most_common(3)
    assert set(numbers) == set(range(1, SEEDED + 1)) | {int(added.version)}
    assert numbers == sorted(numbers)


def test_versions_pages_newest_first_with_filters(store):
    uri, client, seeded = store
    newest = version_records(client, MODEL, VersionQuery(limit=20))
    assert [r["version"] for r in newest] == list(range(SEEDED, SEEDED - 20, -1))
    every = version_records(client, MODEL)
    assert len(every) == SEEDED
    best = next(r for r in every if r["version"] == seeded.best_version)
    assert best["aliases"] == ["best"]
    trial = seeded.trials[1]
    of_trial = version_records(client, MODEL, VersionQuery(limit=5, trial=trial))
    assert len(of_trial) == 5 and {r["trial_id"] for r in of_trial} == {trial}
    ranged = version_records(client, MODEL, VersionQuery(iterations=(100, 110)))
    assert sorted({r["training_iteration"] for r in ranged}) == list(range(100, 111))
    assert len(ranged) == 11 * 4  # four trials
    condition = parse_condition("episode_return_mean>=495")
    high = version_records(client, MODEL, VersionQuery(condition=condition))
    expected = sorted((n for n, v in seeded.returns.items() if v >= 495), reverse=True)
    assert [r["version"] for r in high] == expected and expected
    result = CliRunner().invoke(
        cli, ["versions", MODEL, "--limit", "3", "--iterations", "7", "--json",
              "--tracking-uri", uri], catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["training_iteration"] for r in rows] == [7, 7, 7]
    bad = CliRunner().invoke(cli, ["versions", MODEL, "--where", "return > lots",
                                   "--tracking-uri", uri])  # fmt: skip
    assert bad.exit_code == 2 and "episode_return_mean>=400" in bad.output


def test_prune_at_scale_keeps_the_last_and_best_and_deletes_the_rest(store):
    uri, client, seeded = store
    plan = plan_prune(client, MODEL, keep_last=5, keep_best=3)
    kept = {int(v.version) for v in plan.keep}
    last = set(range(SEEDED - 4, SEEDED + 1))  # the highest iterations (500, by 4 trials)...
    best = set(sorted(seeded.returns, key=seeded.returns.get, reverse=True)[:3])
    assert last | best <= kept and len(kept) <= 8
    assert len(plan.delete) == SEEDED - len(kept)
    assert [int(v.version) for v in plan.delete] == sorted(
        (int(v.version) for v in plan.delete), reverse=True
    )
    result = CliRunner().invoke(
        cli, ["prune", MODEL, "--keep-last", "5", "--keep-best", "3", "--dry-run", "--json",
              "--tracking-uri", uri], catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {r["version"] for r in report["kept"]} == kept
    assert len(report["deleted"]) == SEEDED - len(kept)
    assert len(list(iter_versions(client, [f"name = '{MODEL}'"]))) == SEEDED  # a dry run


def test_an_older_registry_with_iteration_aliases_resolves_and_prunes(tmp_path):
    uri = f"sqlite:///{tmp_path}/old.db"
    seeded = seed_versions(uri, MODEL, 300, trials=1, iteration_aliases=True, summary=False)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert len(client.get_registered_model(MODEL).aliases) == 301  # iter-1..300 and best
    version = find_version(f"models:/{MODEL}@iter-17", tracking_uri=uri)
    assert str(version.version) == "17" and version.tags["training_iteration"] == "17"
    kept = {299, 300, seeded.best_version}
    plan = plan_prune(client, MODEL, keep_last=2)
    assert {int(v.version) for v in plan.keep} == kept
    assert plan.reasons[str(seeded.best_version)] == "alias best"  # iter-N protects nothing
    result = CliRunner().invoke(
        cli, ["prune", MODEL, "--keep-last", "2", "--tracking-uri", uri], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    deleted = 300 - len(kept)
    assert f"{deleted}/{deleted}" in result.stderr  # the progress bar
    assert {int(v.version) for v in iter_versions(client, [f"name = '{MODEL}'"])} == kept
    model = client.get_registered_model(MODEL)
    assert set(model.aliases) == {"best", *(f"iter-{n}" for n in kept)}  # gone with theirs
    summary = model.tags[names.MODEL_TAG_SUMMARY]
    assert summary.startswith(f"{len(kept)} version(s) from 1 trial(s)"), summary  # recounted


_CLI_WITHOUT_MLFLOW = """
import sys
from rllib_mlflow.cli import main
code = main(sys.argv[1:])
print("mlflow imported:", "mlflow" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.slow
def test_versions_and_a_dry_run_against_a_server_page_over_rest(seeded_db, tmp_path):
    path, seeded = seeded_db
    shutil.copy(path, tmp_path / "mlflow.db")
    server = start_tracking_server(tmp_path)
    try:

        def command(*args: str) -> subprocess.CompletedProcess:
            argv = [sys.executable, "-c", _CLI_WITHOUT_MLFLOW, *args, "--tracking-uri", server.uri]
            return subprocess.run(argv, capture_output=True, text=True, timeout=300)

        listed = command("versions", MODEL, "--limit", "5", "--trial", seeded.trials[2], "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [r["version"] for r in rows] == [SEEDED - 1 - 4 * k for k in range(5)]
        assert "mlflow imported: False" in listed.stderr  # REST only: no `import mlflow`
        dry = command("prune", MODEL, "--keep-last", "3", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        report = json.loads(dry.stdout)
        assert len(report["deleted"]) + len(report["kept"]) == SEEDED
        deleted = [r["version"] for r in report["deleted"]]  # two pages in flight, in order
        assert deleted == sorted(set(deleted), reverse=True)
        assert {r["version"] for r in report["kept"]} == {SEEDED, SEEDED - 1, SEEDED - 2,
                                                          seeded.best_version}  # fmt: skip
    finally:
        server.stop()


_QUERIES = {
    "newest 20": VersionQuery(limit=20),
    "every version": VersionQuery(),
    "one trial": VersionQuery(limit=7, trial="seed0002"),
    "a trial by name": VersionQuery(trial="PPO_CartPole-v1_seed0001"),
    "one iteration": VersionQuery(iterations=(7, 7)),
    "iterations 100-110": VersionQuery(iterations=(100, 110)),
    "a condition": VersionQuery(condition=parse_condition("episode_return_mean>=490")),
    "no such trial": VersionQuery(trial="nobody"),
}


def test_the_database_reader_answers_as_mlflow_does(store):
    """`versions` and `prune --dry-run` on a database read MLflow's tables directly
    (sql_reader): every listing and plan is the one MLflow's own client gives."""
    uri, client, seeded = store
    client.set_registered_model_alias(MODEL, "prod", "12")
    client.delete_model_version(MODEL, "1999")  # gone, and not listed
    client.create_registered_model(f"{MODEL}-other")  # a name sharing the prefix
    reader = sql_reader(uri)
    assert isinstance(reader, SqlReader)
    for label, query in _QUERIES.items():
        ours, mlflow_s = (version_records(c, MODEL, query) for c in (reader, client))
        assert ours == mlflow_s, label
    assert len(version_records(reader, MODEL)) == SEEDED - 1
    for keep in ({"keep_last": 5}, {"keep_best": 3}, {"keep_last": 2, "keep_best": 2}):
        ours, mlflow_s = (plan_prune(c, MODEL, **keep) for c in (reader, client))
        assert ours == mlflow_s, keep
    assert plan_prune(reader, MODEL, keep_last=1).reasons["12"] == "alias prod"
    with pytest.raises(ValueError, match="does not read the filter"):
        reader.search_model_versions(f"name LIKE '{MODEL}%'", order_by=["version_number ASC"])


def test_the_cli_reads_a_database_without_importing_mlflow(store, tmp_path):
    uri, _, seeded = store

    def command(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", _CLI_WITHOUT_MLFLOW, *args, "--tracking-uri", uri]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    listed = command("versions", MODEL, "--limit", "3", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["version"] for r in json.loads(listed.stdout)] == [SEEDED, SEEDED - 1, SEEDED - 2]
    assert "mlflow imported: False" in listed.stderr
    dry = command("prune", MODEL, "--keep-last", "3", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert len(json.loads(dry.stdout)["deleted"]) == SEEDED - 4  # the last 3 and best kept
    assert "mlflow imported: False" in dry.stderr
    missing = command("versions", "nothing-here")
    assert missing.returncode != 0 and "No registered model 'nothing-here'" in missing.stderr
    assert "registered models there: scale" in missing.stderr


def test_a_database_of_another_schema_is_read_through_mlflow(tmp_path):
    """A column the reader needs missing (another MLflow's schema): MLflow's client reads."""
    import sqlite3

    path = tmp_path / "odd.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE model_versions (name TEXT, version INTEGER)")
    assert sql_reader(f"sqlite:///{path}") is None
    assert sql_reader("http://127.0.0.1:5000") is None
