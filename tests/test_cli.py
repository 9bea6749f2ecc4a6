"""The `rllib-mlflow` command as a person meets it: --version, help texts with the
environment variables they read, exit codes 0 / 1 / 2 with one-line errors, stores that
reading commands never create, a dead server given up on in seconds, --json keyed like the
tags, -q / -v, and progress bars. click's CliRunner for the command itself, and a few runs
of the installed console script for what only a real process shows."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from rllib_mlflow import __version__, log_checkpoint
from rllib_mlflow.cli import cli
from tests.mlflow_server import free_port

CLI = str(Path(sys.executable).with_name("rllib-mlflow"))
MODEL = "cli-policy"


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def one_error_line(result) -> str:
    """The failure's single line on stderr, after checking that it is the only output."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert lines[0].startswith("rllib-mlflow: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def store(trained_checkpoint, tmp_path_factory) -> str:
    """A SQLite store with two versions of MODEL (best: version 2)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('cli')}/mlflow.db"
    checkpoint = trained_checkpoint("ppo_cartpole").path
    for iteration in (1, 2):
        log_checkpoint(
            checkpoint, MODEL, training_iteration=iteration, formats=["onnx"], tracking_uri=uri,
            metrics={"env_runners": {"episode_return_mean": 10.0 * iteration,
                                     "num_env_steps_sampled_lifetime": 200 * iteration}},
        )  # fmt: skip
    return uri


# -- usage: --version, help, exit code 2 ----------------------------------------------------


def test_version_and_help_texts_with_environment_variables():
    version = run("--version")
    assert (
        version.exit_code == 0 and version.output.strip() == f"rllib-mlflow, version {__version__}"
    )
    for name, command in cli.commands.items():
        for option in command.params:
            if isinstance(option, click.Option):
                assert option.help, f"{name} {option.opts} has no help text"
        help_text = run(name, "--help").output
        for flag in ("--json", "-q, --quiet", "-v, --verbose"):
            assert flag in help_text, (name, flag)
        if any(p.name == "tracking_uri" for p in command.params):
            assert "env var:" in help_text and "MLFLOW_TRACKING_URI" in help_text, name


def test_usage_errors_exit_2_and_evaluate_keeps_its_name(tmp_path):
    swallowed = run("evaluate", "--versions", "3", "4", "NAME")
    assert swallowed.exit_code == 2
    assert "--versions 3,4" in swallowed.stderr  # says how to pass several
    assert run("sync", str(tmp_path / "nope"), "--name", "foo").exit_code == 2
    assert run("register", str(tmp_path / "nope"), "--name", "foo").exit_code == 2
    assert run("prune", "foo").exit_code == 2  # nothing to keep said
    assert run("nonsense").exit_code == 2


# -- runtime failures: exit 1, one line, no store created, dead servers --------------------


def test_read_commands_never_create_a_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    for args in (["versions", "foo"], ["prune", "foo", "--keep-last", "1"],
                 ["evaluate", "foo"]):  # fmt: skip
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        line = one_error_line(result)
        assert f"sqlite:///{tmp_path}/mlflow.db" in line and "does not exist" in line
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_is_one_line_naming_the_store_and_its_models(store):
    for args in (["versions", "no-such-model"], ["prune", "no-such-model", "--keep-last", "1"]):
        result = run(*args, "--tracking-uri", store)
        assert result.exit_code == 1
        line = one_error_line(result)
        assert "'no-such-model'" in line and store in line and MODEL in line
    verbose = run("versions", "no-such-model", "--tracking-uri", store, "-v")
    assert verbose.exit_code == 1 and "Traceback" in verbose.stderr


def test_an_unreachable_server_is_given_up_on_within_seconds(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    for args in (["versions", "foo"], ["prune", "foo", "--keep-last", "1"], ["evaluate", "foo"],
                 ["register", str(tmp_path), "--name", "foo"],
                 ["sync", str(tmp_path), "--name", "foo"]):  # fmt: skip
        started = time.monotonic()
        result = run(*args, "--tracking-uri", dead)
        assert time.monotonic() - started < 30, args
        assert result.exit_code == 1, (args, result.output)
        assert "Cannot reach the MLflow tracking server" in one_error_line(result)


# -- results: --json, -q, the table, progress ----------------------------------------------


def test_versions_json_uses_tag_names_lists_and_utc_times(store):
    result = run("versions", MODEL, "--tracking-uri", store, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["version"] for r in rows] == [2, 1]  # newest first
    assert [r["training_iteration"] for r in rows] == [2, 1]
    assert [r["episode_return_mean"] for r in rows] == [20.0, 10.0]
    assert [r["num_env_steps_sampled_lifetime"] for r in rows] == [400, 200]
    assert rows[0]["aliases"] == ["best"] and rows[1]["aliases"] == []
    assert rows[0]["formats"] == ["onnx"]
    created = datetime.datetime.fromisoformat(rows[0]["created"])
    assert rows[0]["created"].endswith("Z") and created.utcoffset() == datetime.timedelta(0)
    assert abs(time.time() - created.timestamp()) < 3600
    assert f"in {store}: 2 version(s) listed" in result.stderr  # which store it looked at
    quiet = run("versions", MODEL, "--tracking-uri", store, "-q")
    assert quiet.stderr == "" and quiet.stdout.splitlines()[0].split()[:4] == [
        "version", "aliases", "trial", "iteration"
    ]  # fmt: skip


def test_prune_shows_a_progress_bar_and_reports_json(trained_checkpoint, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for iteration in (1, 2, 3):
        log_checkpoint(trained_checkpoint("ppo_cartpole").path, "to-prune", formats=["onnx"],
                       training_iteration=iteration, tracking_uri=uri)  # fmt: skip
    result = run("prune", "to-prune", "--keep-last", "1", "--tracking-uri", uri, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # The same checkpoint each time: `best` stays on version 1, which keeps it.
    assert report["deleted"] == [{"version": 2, "training_iteration": 2}]
    assert report["kept"] == [
        {"version": 3, "training_iteration": 3, "reason": "among the newest 1"},
        {"version": 1, "training_iteration": 1, "reason": "alias best"},
    ]
    assert "prune to-prune" in result.stderr and "1/1" in result.stderr and "ETA" in result.stderr
    description = MlflowClient(uri, registry_uri=uri).get_registered_model("to-prune").description
    assert "2 version(s)" in description  # the family card follows the prune


# -- the installed console script in a real process ----------------------------------------


def test_console_script_versions_without_a_store_fails_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    started = time.monotonic()
    proc = subprocess.run([CLI, "versions", "foo"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "No MLflow store at sqlite:///" in proc.stderr
    assert list(tmp_path.iterdir()) == [] and time.monotonic() - started < 30
