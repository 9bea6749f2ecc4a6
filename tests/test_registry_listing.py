"""What a reader following the documentation literally hits in the registry commands: a
filtered `versions` listing that matches nothing, a version of no trial (a plain training
loop) beside Tune trials picked by iteration, and `prune --keep-last` keeping the newest
versions. Versions are seeded straight into a SQLite store (tests/registry_seed.py): no
export, a few seconds."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from rllib_mlflow.cli import cli
from rllib_mlflow.errors import RegistryError
from rllib_mlflow.mlflow.retention import plan_prune
from rllib_mlflow.mlflow.versions import find_version
from tests.registry_seed import seed_versions

MODEL = "listing"


@pytest.fixture
def uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_a_filtered_listing_that_matches_nothing_prints_the_headers(uri):
    """It crashed (`max()` of an empty table) with `TypeError: 'int' object is not iterable`."""
    seed_versions(uri, MODEL, 3)
    filters = ["--trial", "3a7c1_00002", "--iterations", "100-200",
               "--where", "eval.episode_return_mean>450", "--tracking-uri", uri]  # fmt: skip
    table = CliRunner().invoke(cli, ["versions", MODEL, "--limit", "20", *filters])
    assert table.exit_code == 0, table.output
    assert table.stdout.split() == ["version", "aliases", "trial", "iteration", "env_steps",
                                    "return", "eval_return", "formats", "created"]  # fmt: skip
    assert f"No version of {MODEL} matches." in table.stderr
    listed = CliRunner().invoke(cli, ["versions", MODEL, "--json", *filters])
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []


def test_a_plain_loop_version_beside_tune_trials_is_picked_with_trial_empty(uri):
    """`log_checkpoint` outside Tune writes no trial tags; `trial=""` picks its version."""
    seed_versions(uri, MODEL, 2)  # a Tune trial's iterations 1 and 2
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    plain = client.create_model_version(
        MODEL, source="/tmp/plain-loop/model",
        tags={"training_iteration": "2", "module_id": "default_policy"},
    )  # fmt: skip
    with pytest.raises(RegistryError, match=r"\['', 'seed0000'\].*trial=''"):
        find_version(MODEL, training_iteration=2, tracking_uri=uri)
    picked = find_version(MODEL, training_iteration=2, trial="", tracking_uri=uri)
    assert picked.version == plain.version
    tune = find_version(MODEL, training_iteration=2, trial="seed0000", tracking_uri=uri)
    assert str(tune.version) == "2"
    with pytest.raises(RegistryError, match="no version for training_iteration=1"):
        find_version(MODEL, training_iteration=1, trial="", tracking_uri=uri)


def test_keep_last_keeps_the_newest_versions_whatever_their_iteration(uri):
    """A newer version of a lower iteration (a second trial, a backfill) is among the last."""
    seed_versions(uri, MODEL, 4, best_alias=False)  # versions 1-4: iterations 1-4
    seed_versions(uri, MODEL, 1, best_alias=False)  # version 5: iteration 1, registered last
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    plan = plan_prune(client, MODEL, keep_last=2)
    assert {v.version for v in plan.keep} == {"4", "5"}
    assert plan.reasons == {"4": "among the newest 2", "5": "among the newest 2"}
    dry = CliRunner().invoke(
        cli, ["prune", MODEL, "--keep-last", "2", "--dry-run", "--tracking-uri", uri]
    )
    assert dry.exit_code == 0, dry.output
    assert "would delete version 3 (iteration 3)" in dry.stdout
    assert "kept version 5 (among the newest 2)" in dry.stdout
    help_text = CliRunner().invoke(cli, ["prune", "--help"]).stdout
    assert "Keep the N newest versions" in " ".join(help_text.split())
