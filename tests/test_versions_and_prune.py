"""`rllib-mlflow versions` and retention (`prune`, the callback's keep_last/keep_best) on
versions registered from a really trained checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rllib_mlflow import log_checkpoint
from rllib_mlflow.mlflow.retention import plan_prune
from tests.cards import assert_card_and_replay

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("rllib-mlflow"))
RETURNS = {1: 10.0, 2: 50.0, 3: 20.0, 4: 40.0, 5: 30.0, 6: 5.0}


def _register_six(checkpoint: str, uri: str, name: str) -> MlflowClient:
    for iteration, value in RETURNS.items():
        log_checkpoint(
            checkpoint,
            name,
            training_iteration=iteration,
            metrics={"env_runners": {"episode_return_mean": value}},
            formats=["onnx"],
            tracking_uri=uri,
        )
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias(name, "prod", "1")  # set by a person: never pruned
    return client


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def registered(trained_checkpoint, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = _register_six(trained_checkpoint("ppo_cartpole").path, uri, "prune-me")
    return uri, client


def test_versions_lists_iterations_returns_and_aliases(registered):
    uri, _ = registered
    listed = _cli("versions", "prune-me", "--tracking-uri", uri, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["training_iteration"] for r in rows] == [6, 5, 4, 3, 2, 1]  # newest first
    assert [r["episode_return_mean"] for r in rows] == list(RETURNS.values())[::-1]
    assert rows[4]["aliases"] == ["best"] and rows[5]["aliases"] == ["prod"]
    assert all(r["formats"] == ["onnx"] for r in rows)
    table = _cli("versions", "prune-me", "--tracking-uri", uri)
    assert table.stdout.splitlines()[0].split()[:4] == ["version", "aliases", "trial", "iteration"]
    assert len(table.stdout.splitlines()) == 7


def test_prune_keeps_last_best_and_aliased_versions(registered):
    uri, client = registered
    plan = plan_prune(client, "prune-me", keep_last=2, keep_best=1)
    kept = {v.training_iteration for v in plan.keep}
    assert kept == {1, 2, 5, 6}  # prod alias, best (50), the last two
    dry = _cli(
        "prune", "prune-me", "--keep-last", "2", "--keep-best", "1", "--dry-run",
        "--tracking-uri", uri,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "would delete version 3" in dry.stdout and "would delete version 4" in dry.stdout
    assert len(client.search_model_versions("name = 'prune-me'")) == 6  # dry run: untouched
    real = _cli(
        "prune", "prune-me", "--keep-last", "2", "--keep-best", "1", "--delete-artifacts",
        "--tracking-uri", uri,
    )  # fmt: skip
    assert real.returncode == 0, real.stderr
    remaining = {int(v.version) for v in client.search_model_versions("name = 'prune-me'")}
    assert remaining == {1, 2, 5, 6}
    aliases = client.get_registered_model("prune-me").aliases
    assert aliases["best"] in ("2", 2) and aliases["prod"] in ("1", 1)
    assert set(aliases) == {"best", "prod"}


def test_register_backfills_an_experiment_trained_without_the_callback(ray_session, tmp_path):
    from tests import tune_job

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tune_job.run(
        str(tmp_path / "results"), uri, iterations=2, num_to_keep=None, with_callback=False
    )
    experiment = tmp_path / "results" / tune_job.EXPERIMENT
    backfill = _cli(
        "register", str(experiment), "--name", "backfilled", "--video", "--tracking-uri", uri
    )
    assert backfill.returncode == 0, backfill.stdout[-2000:] + backfill.stderr[-3000:]
    assert "4/4" in backfill.stderr  # progress: two trials x two checkpoints
    assert "4 checkpoint(s) registered" in backfill.stdout
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'backfilled'")
    keys = sorted((v.tags["trial_id"], int(v.tags["training_iteration"])) for v in versions)
    assert len(keys) == 4 and len(set(keys)) == 4
    assert {k[1] for k in keys} == {1, 2}
    assert all(float(v.tags["episode_return_mean"]) > 0 for v in versions)
    assert all(v.tags["trial_name"].startswith("PPO_CartPole-v1_") for v in versions)
    for version in versions:  # a card and a replay on each
        assert_card_and_replay(client, version)
    one_checkpoint = next(experiment.glob("*/checkpoint_000001"))
    again = _cli(
        "register", str(one_checkpoint), "--name", "backfilled", "--tracking-uri", uri, "--json"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    (report,) = json.loads(again.stdout)
    assert report["path"] == str(one_checkpoint) and report["tracking_uri"] == uri
    assert len(report["registered"]) == 1 and report["failed"] == {}
    assert len(client.search_model_versions("name = 'backfilled'")) == 4  # idempotent
