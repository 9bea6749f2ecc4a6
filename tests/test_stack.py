"""rllib-mlflow on the production stack: PostgreSQL + SeaweedFS S3 + `mlflow server`.

One Tune run with its storage on S3 feeds the registry through the plain server; the tests
then check every step a team relies on: versions in PostgreSQL, artifacts in the bucket,
`load_policy("models:/...@best")`, `mlflow models serve`, and the recorded checkpoint URI
downloaded from S3 and resumed with `Algorithm.from_checkpoint`.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
from mlflow import MlflowClient

import rllib_mlflow
from tests import tune_job
from tests.mlflow_server import post_json, start_model_server, subprocess_env
from tests.stack import production_stack, run_tune_on_s3  # noqa: F401

pytestmark = pytest.mark.slow
ITERATIONS = 2


@pytest.fixture(scope="module")
def s3_environment(production_stack):  # noqa: F811
    """The training job's environment: S3 credentials and endpoint, as on a cluster."""
    saved = dict(os.environ)
    os.environ.update(production_stack.client_environment())
    try:
        yield production_stack.client_environment()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def s3_run(ray_session, production_stack, s3_environment):  # noqa: F811
    """A one-trial Tune run, checkpoints on S3, registered through the PostgreSQL server."""
    experiment = f"stack-{uuid.uuid4().hex[:8]}"
    results = run_tune_on_s3(
        production_stack, production_stack.tracking_uri, experiment, iterations=ITERATIONS
    )
    assert not results.errors, results.errors
    client = MlflowClient(production_stack.tracking_uri, production_stack.tracking_uri)
    versions = client.search_model_versions(f"name = '{tune_job.MODEL_NAME}'")
    return experiment, results, versions


def test_every_s3_checkpoint_is_registered(s3_run):
    _, results, versions = s3_run
    trial_id = results[0].metrics["trial_id"]
    assert sorted(int(v.tags["training_iteration"]) for v in versions) == [1, 2]
    assert {v.tags["trial_id"] for v in versions} == {trial_id}
    for version in versions:
        # The checkpoint Tune wrote lives in the bucket, and the tag says so as a usable URI.
        assert version.tags["checkpoint_uri"].startswith("s3://ray/ray-results/"), version.tags


def test_versions_are_rows_in_postgres(production_stack, s3_run):  # noqa: F811
    _, _, versions = s3_run
    rows = production_stack.query(
        "SELECT v.version, t.value FROM model_versions v JOIN model_version_tags t "
        "ON t.name = v.name AND t.version = v.version "
        "WHERE v.name = %s AND t.key = 'training_iteration' ORDER BY v.version",
        (tune_job.MODEL_NAME,),
    )
    assert rows == sorted((int(v.version), v.tags["training_iteration"]) for v in versions)
    aliases = production_stack.query(
        "SELECT alias FROM registered_model_aliases WHERE name = %s", (tune_job.MODEL_NAME,)
    )
    assert {alias for (alias,) in aliases} == {"best"}  # `@iter-N` resolves through the tags


def test_model_artifacts_are_objects_in_the_bucket(production_stack, s3_run):  # noqa: F811
    keys = production_stack.object_keys()
    names = {key.rsplit("/", 1)[-1] for key in keys}
    assert {"MLmodel", "model.onnx", "model.h5", "saved_model.pb", "policy.json"} <= names, names
    # one ONNX file per registered version
    assert sum(key.endswith("/model.onnx") for key in keys) == len(s3_run[2])


def test_load_policy_best_computes_actions(production_stack, s3_run):  # noqa: F811
    policy = rllib_mlflow.load_policy(
        f"models:/{tune_job.MODEL_NAME}@best", tracking_uri=production_stack.tracking_uri
    )
    observations = np.random.default_rng(0).uniform(-0.05, 0.05, (8, 4)).astype(np.float32)
    actions = policy.compute_actions(observations)
    assert actions.shape == (8,) and set(np.unique(actions)) <= {0, 1}


def test_mlflow_models_serve_a_version(production_stack, s3_run, tmp_path):  # noqa: F811
    server = start_model_server(
        f"models:/{tune_job.MODEL_NAME}/1",
        production_stack.tracking_uri,
        tmp_path / "serve.log",
        env=subprocess_env(),
    )
    try:
        status, body = post_json(
            server.uri + "/invocations", {"inputs": [[0.01, -0.02, 0.03, 0.0]] * 3}
        )
    finally:
        server.stop()
    assert status == 200, body
    assert len(body["predictions"]) == 3


def test_checkpoint_uri_on_s3_downloads_and_resumes(
    production_stack,  # noqa: F811
    s3_run,
    s3_environment,
    tmp_path,
):
    from ray.rllib.algorithms.algorithm import Algorithm

    path = rllib_mlflow.download_checkpoint(
        f"models:/{tune_job.MODEL_NAME}@iter-2",
        str(tmp_path),
        tracking_uri=production_stack.tracking_uri,
    )
    assert os.path.isfile(os.path.join(path, "algorithm_state.pkl")), os.listdir(path)
    algo = Algorithm.from_checkpoint(path)
    try:
        assert algo.iteration == ITERATIONS
        assert algo.train()["training_iteration"] == ITERATIONS + 1
    finally:
        algo.stop()


def test_only_tunes_own_state_holds_a_storage_filesystem_key(production_stack, s3_run):  # noqa: F811
    """Why the README says to give S3 credentials through the environment: Tune pickles the
    run config, `storage_filesystem` and its keys included, into the experiment's state.
    Nothing of rllib-mlflow's (the MLflow bucket, PostgreSQL) holds the key."""
    s3 = production_stack.s3_client()
    secret = production_stack.secret_key.encode()
    holders = set()
    for bucket in ("ray", production_stack.bucket):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                if secret in s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read():
                    holders.add(f"{bucket}/{item['Key']}")
    assert holders, "Tune no longer pickles the filesystem: update the README's advice"
    assert all(h.startswith(f"ray/ray-results/{s3_run[0]}/") for h in holders), holders
    assert not any("/checkpoint_" in h for h in holders), holders
