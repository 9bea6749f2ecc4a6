"""Our `MLflowLoggerCallback` is a drop-in for Ray's: the same sweep logged by both at once
leaves every tag, param and metric history of Ray's runs in ours (the config goes to params
only: Ray also logs its numeric values as `config/*` metrics), in the experiment Ray picks
from `experiment_name`, MLFLOW_EXPERIMENT_NAME or MLFLOW_EXPERIMENT_ID.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.mlflow_server import start_tracking_server, subprocess_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
OURS = "rllib_mlflow.trial_id"  # the tag our runs carry


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_tracking_server(tmp_path_factory.mktemp("compat"))
    yield server
    server.stop()


def _run_sweep(server, tmp_path: Path, scenario: str, **env: str) -> MlflowClient:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ray_compat_job.py"), server.uri]
        + [str(tmp_path / "results"), scenario],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=subprocess_env(PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", **env),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return MlflowClient(server.uri)


def _runs_by_side(client: MlflowClient, experiment_ids: list[str]) -> tuple[dict, dict]:
    """Ray's and our runs in those experiments, by trial name."""
    runs = client.search_runs(experiment_ids, max_results=100)
    rays = {r.data.tags["trial_name"]: r for r in runs if OURS not in r.data.tags}
    ours = {r.data.tags["trial_name"]: r for r in runs if OURS in r.data.tags}
    return rays, ours


def _assert_ours_hold_rays(client: MlflowClient, rays: dict, ours: dict) -> None:
    assert len(rays) == 2 and sorted(ours) == sorted(rays)
    for trial, ray_run in rays.items():
        our_run = ours[trial]
        missing_tags = {k: v for k, v in ray_run.data.tags.items() if our_run.data.tags.get(k) != v}
        assert not missing_tags, (trial, missing_tags, our_run.data.tags)
        missing_params = {
            k: v for k, v in ray_run.data.params.items() if our_run.data.params.get(k) != v
        }
        assert not missing_params, (trial, missing_params)
        metrics = [k for k in ray_run.data.metrics if not k.startswith("config/")]
        assert {"score", "nested/loss", "even", "training_iteration"} <= set(metrics)
        for key in metrics:
            theirs = [
                (m.step, m.value) for m in client.get_metric_history(ray_run.info.run_id, key)
            ]
            mine = [(m.step, m.value) for m in client.get_metric_history(our_run.info.run_id, key)]
            assert sorted(mine) == sorted(theirs), (trial, key, theirs, mine)
        assert our_run.info.status == ray_run.info.status == "FINISHED"


def _history(client: MlflowClient, run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def test_named_experiments(server, tmp_path):
    client = _run_sweep(server, tmp_path, "named")
    rays_experiment = client.get_experiment_by_name("rays").experiment_id
    ours_experiment = client.get_experiment_by_name("ours").experiment_id
    rays, _ = _runs_by_side(client, [rays_experiment])
    _, ours = _runs_by_side(client, [ours_experiment])
    _assert_ours_hold_rays(client, rays, ours)
    assert ours[next(iter(ours))].data.tags.get("mlflow.source.git.commit")  # a git checkout


def test_mlflow_experiment_name_from_the_environment(server, tmp_path):
    client = _run_sweep(server, tmp_path, "env", MLFLOW_EXPERIMENT_NAME="from-env-name")
    experiment = client.get_experiment_by_name("from-env-name").experiment_id
    _assert_ours_hold_rays(client, *_runs_by_side(client, [experiment]))


def test_mlflow_experiment_id_from_the_environment(server, tmp_path):
    client = MlflowClient(server.uri)
    experiment = client.create_experiment("chosen-by-id")
    client = _run_sweep(server, tmp_path, "env", MLFLOW_EXPERIMENT_ID=experiment)
    _assert_ours_hold_rays(client, *_runs_by_side(client, [experiment]))
    names = [e.name for e in client.search_experiments()]
    assert "compat" not in names  # not the Tune experiment's name
