"""A two-node Ray cluster on this machine, the trial on the non-head node, checkpoints on
S3, the callback on the driver: every checkpoint is registered on the production stack."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests import tune_job
from tests.mlflow_server import subprocess_env
from tests.stack import production_stack  # noqa: F401

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_trial_on_the_second_node_registers_every_checkpoint(production_stack, tmp_path):  # noqa: F811
    experiment = f"cluster-{uuid.uuid4().hex[:8]}"
    output = tmp_path / "summary.json"
    env = subprocess_env(
        **production_stack.client_environment(),
        STACK_TRACKING_URI=production_stack.tracking_uri,
        STACK_EXPERIMENT=experiment,
        RAY_AUTH_MODE="disabled",
        PYTHONPATH=str(ROOT),
    )
    completed = subprocess.run(
        [sys.executable, "-m", "tests.stack_cluster_job", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    summary = json.loads(output.read_text())
    assert summary["errors"] == []
    assert summary["nodes"] == 2
    assert summary["trial_node_id"] == summary["worker_node_id"] != summary["head_node_id"]

    client = MlflowClient(production_stack.tracking_uri, production_stack.tracking_uri)
    versions = [
        v
        for v in client.search_model_versions(f"name = '{tune_job.MODEL_NAME}'")
        if v.tags.get("trial_id") == summary["trial_id"]
    ]
    assert sorted(int(v.tags["training_iteration"]) for v in versions) == [1, 2]
    for version in versions:
        assert version.tags["checkpoint_uri"].startswith(f"s3://ray/ray-results/{experiment}/")
    keys = production_stack.object_keys()
    assert sum(key.endswith("/model.onnx") for key in keys) >= 2
