"""log_checkpoint, lookups, load_policy and download_checkpoint against a real MLflow server.

One module-scoped fixture registers a really trained PPO CartPole checkpoint at three
training iterations (metrics 20, 30, 25: `best` must end on iteration 2) in one run, and a
multi-agent checkpoint; the tests then read that registry back in every way a user would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from rllib_mlflow.errors import RegistryError, TrackingError
from rllib_mlflow.mlflow.versions import find_version
from tests.mlflow_server import (  # noqa: F401
    free_port,
    mlflow_server,
    start_tracking_server,
    subprocess_env,
)
from tests.policies import cartpole_observations, rllib_actions

pytestmark = pytest.mark.slow

NAME = "cartpole-ppo"
MULTI_NAME = "two-cartpoles"
RETURNS = {1: 20.0, 2: 30.0, 3: 25.0}  # iteration -> episode_return_mean
STEPS_PER_ITERATION = 200


def metrics_at(iteration: int) -> dict:
    return {
        "env_runners": {
            "episode_return_mean": RETURNS[iteration],
            "num_env_steps_sampled_lifetime": STEPS_PER_ITERATION * iteration,
        },
        "training_iteration": iteration,
    }


@pytest.fixture(scope="module")
def registered(mlflow_server, trained_checkpoint, tmp_path_factory):  # noqa: F811
    """NAME versions 1-3 (iterations 1-3) in one run, plus the multi-agent models."""
    from mlflow import MlflowClient

    from rllib_mlflow import log_checkpoint

    uri = mlflow_server.uri
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("test_registry")
    run_id = client.create_run(experiment_id).info.run_id
    ckpt = trained_checkpoint("ppo_cartpole")
    # Iteration 3 comes from a copy that is uploaded and then deleted, so that
    # download_checkpoint must fetch it from MLflow.
    copy = Path(tmp_path_factory.mktemp("ckpt_copy"), "checkpoint_000003")
    shutil.copytree(ckpt.path, copy)

    def log(iteration: int, source: str, **kwargs):
        return log_checkpoint(
            source,
            NAME,
            training_iteration=iteration,
            metrics=metrics_at(iteration),
            run_id=run_id,
            tracking_uri=uri,
            **kwargs,
        )

    aliases_after = {}
    versions = {}
    # Full formats on iteration 2 (the best), ONNX alone elsewhere to keep the module fast.
    for iteration, source, kwargs in (
        (1, ckpt.path, {"formats": ("onnx",)}),
        (2, ckpt.path, {}),
        (3, str(copy), {"formats": ("onnx",), "log_rllib_checkpoint": True}),
    ):
        (versions[iteration],) = log(iteration, source, **kwargs)
        aliases_after[iteration] = dict(client.get_registered_model(NAME).aliases)
    shutil.rmtree(copy)
    start = time.perf_counter()
    (again,) = log(2, ckpt.path)
    relog_seconds = time.perf_counter() - start

    multi = trained_checkpoint("ppo_multiagent")
    multi_versions = log_checkpoint(
        multi.path,
        MULTI_NAME,
        metrics={"env_runners": {"episode_return_mean": 15.0}},
        formats=("onnx",),
        tracking_uri=uri,
    )
    return {
        "uri": uri,
        "client": client,
        "run_id": run_id,
        "experiment_id": experiment_id,
        "checkpoint": ckpt,
        "versions": versions,
        "aliases_after": aliases_after,
        "again": again,
        "relog_seconds": relog_seconds,
        "multi": multi,
        "multi_versions": multi_versions,
    }


# -- 1. logging and registering -------------------------------------------------------------


def test_version_tags(registered):
    client = registered["client"]
    version = client.get_model_version(NAME, "2")
    tags = version.tags
    assert version.run_id == registered["run_id"]
    assert tags["training_iteration"] == "2"
    assert tags["module_id"] == "default_policy"
    assert tags["algorithm"] == "PPO"
    assert tags["env_id"] == "CartPole-v1"
    assert tags["checkpoint_uri"] == registered["checkpoint"].path
    assert tags["formats"].split(",") == ["saved_model", "h5", "onnx"]
    assert float(tags["parity_max_abs_diff"]) < 1e-4
    assert float(tags["episode_return_mean"]) == RETURNS[2]
    assert int(tags["num_env_steps_sampled_lifetime"]) == 2 * STEPS_PER_ITERATION
    import mlflow
    import ray

    import rllib_mlflow

    assert tags["ray_version"] == ray.__version__
    assert tags["mlflow_version"] == mlflow.__version__
    assert tags["rllib_mlflow_version"] == rllib_mlflow.__version__
    assert client.get_model_version(NAME, "1").tags["formats"] == "onnx"
    assert "rllib_checkpoint_artifact" in client.get_model_version(NAME, "3").tags


def test_aliases_best_moves_only_on_improvement(registered):
    after = registered["aliases_after"]
    # No alias per iteration (they make MLflow's registry reads O(versions)): `iter-N`
    # resolves through the version's training_iteration tag.
    assert after[1] == {"best": "1"}
    assert after[2] == {"best": "2"}  # 30 > 20: moved
    assert after[3] == {"best": "2"}  # 25: kept
    aliases = registered["client"].get_registered_model(NAME).aliases
    assert aliases == after[3]
    for iteration, version in registered["versions"].items():
        found = find_version(f"models:/{NAME}@iter-{iteration}", tracking_uri=registered["uri"])
        assert found.version == version.version


def test_logged_models_at_training_iteration_with_metrics(registered):
    client, run_id = registered["client"], registered["run_id"]
    outputs = client.get_run(run_id).outputs.model_outputs
    steps = {output.model_id: output.step for output in outputs}
    models = client.search_logged_models(experiment_ids=[registered["experiment_id"]])
    assert sorted(m.name for m in models) == ["iter-1", "iter-2", "iter-3"]
    for model in models:
        iteration = int(model.name.removeprefix("iter-"))
        assert model.source_run_id == run_id
        assert steps[model.model_id] == iteration
        metrics = {m.key: m for m in model.metrics}
        returned = metrics["env_runners/episode_return_mean"]
        assert (returned.value, returned.step) == (RETURNS[iteration], iteration)
        version = registered["versions"][iteration]
        assert client.get_model_version(NAME, version.version).source == model.model_uri
    history = client.get_metric_history(run_id, "env_runners/episode_return_mean")
    assert sorted((m.step, m.value) for m in history) == sorted(RETURNS.items())


def test_logging_the_same_iteration_again_returns_the_same_version(registered):
    assert registered["again"].version == registered["versions"][2].version == "2"
    versions = registered["client"].search_model_versions(f"name = '{NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    assert registered["relog_seconds"] < 5  # found before any export work


def test_multi_agent_registers_one_model_per_module(registered):
    client = registered["client"]
    versions = registered["multi_versions"]
    assert sorted(v.name for v in versions) == [f"{MULTI_NAME}-p0", f"{MULTI_NAME}-p1"]
    for version in versions:
        module_id = version.name.rsplit("-", 1)[-1]
        assert version.tags["module_id"] == module_id
        assert version.tags["training_iteration"] == str(registered["multi"].training_iteration)
        assert client.get_registered_model(version.name).aliases["best"] == version.version
    assert not client.search_registered_models(f"name = '{MULTI_NAME}'")


# -- 4. loading in a fresh process, without Ray or torch -------------------------------------

_LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from rllib_mlflow import load_policy

    uri, obs_file = sys.argv[1], sys.argv[2]  # MLFLOW_TRACKING_URI is not set: pass it
    obs = np.load(obs_file)
    out = {}
    for key, model, kwargs in [
        ("v1", "models:/NAME/1", {}),
        ("best", "models:/NAME@best", {}),
        ("iter2", "models:/NAME@iter-2", {}),
        ("iteration3", "NAME", {"training_iteration": 3}),
        ("best_tf", "models:/NAME@best", {"backend": "tensorflow"}),
    ]:
        policy = load_policy(model, tracking_uri=uri, **kwargs)
        out[key] = {
            "actions": policy.compute_actions(obs).tolist(),
            "version": policy.metadata["version"],
            "backend": policy.backend,
            "dist_shape": list(policy.action_dist_inputs(obs).shape),
        }
    out["mlflow_imported"] = "mlflow" in sys.modules  # an HTTP server needs no mlflow
    import mlflow
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model("models:/NAME@best")
    out["pyfunc"] = {"actions": np.asarray(pyfunc.predict(obs)).tolist()}
    out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "torch"))
    print(json.dumps(out))
    """
).replace("NAME", NAME)


def test_load_policy_in_a_fresh_process_without_ray_or_torch(registered, tmp_path):
    observations = cartpole_observations()
    np.save(tmp_path / "obs.npy", observations)
    expected = rllib_actions(registered["checkpoint"].path, observations)
    result = subprocess.run(
        [sys.executable, "-c", _LOADER, registered["uri"], str(tmp_path / "obs.npy")],
        capture_output=True,
        text=True,
        env={k: v for k, v in subprocess_env().items() if k != "MLFLOW_TRACKING_URI"},
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["modules"] == []
    assert out["mlflow_imported"] is False
    expected_versions = {"v1": "1", "best": "2", "iter2": "2", "iteration3": "3", "best_tf": "2"}
    for key, version in expected_versions.items():
        assert out[key]["version"] == version, key
        np.testing.assert_array_equal(np.asarray(out[key]["actions"]), expected, err_msg=key)
        assert out[key]["dist_shape"] == [len(observations), 2]
    assert out["best"]["backend"] == "onnxruntime"
    assert out["best_tf"]["backend"] == "tensorflow"
    np.testing.assert_array_equal(np.asarray(out["pyfunc"]["actions"]), expected)


def test_load_policy_without_an_artifact_proxy_reads_the_store(trained_checkpoint, tmp_path):
    """A server that does not proxy artifacts (`--no-serve-artifacts`, a plain artifact root):
    the REST lookup still finds the version, and its files are read from the root itself."""
    from rllib_mlflow import load_policy, log_checkpoint

    server = start_tracking_server(tmp_path, proxy_artifacts=False)
    try:
        checkpoint = trained_checkpoint("ppo_cartpole").path
        log_checkpoint(checkpoint, "no-proxy", formats=("onnx",), tracking_uri=server.uri)
        policy = load_policy("models:/no-proxy/1", tracking_uri=server.uri)
    finally:
        server.stop()
    observations = cartpole_observations()
    expected = rllib_actions(checkpoint, observations)
    np.testing.assert_array_equal(policy.compute_actions(observations), expected)
    assert policy.metadata["version"] == "1"


def test_load_policy_on_a_database_store_copies_only_what_the_backend_runs(
    trained_checkpoint, tmp_path, capfd
):
    """On a SQLite store the version's files are on this disk: `load_policy` copies the
    backend's file (no MLflow download of every format, no progress bars on stderr), and a
    backend the version was not exported for is refused before anything is read."""
    from rllib_mlflow import load_policy, log_checkpoint

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    checkpoint = trained_checkpoint("ppo_cartpole").path
    log_checkpoint(checkpoint, "on-disk", formats=("onnx",), tracking_uri=uri)
    capfd.readouterr()
    policy = load_policy("models:/on-disk/1", tracking_uri=uri)
    assert "Downloading artifacts" not in capfd.readouterr().err
    observations = cartpole_observations()
    np.testing.assert_array_equal(
        policy.compute_actions(observations), rllib_actions(checkpoint, observations)
    )
    with pytest.raises(RegistryError, match=r"no saved_model export \(its formats: onnx\)"):
        load_policy("models:/on-disk/1", backend="tensorflow", tracking_uri=uri)


# -- 5. bad input -----------------------------------------------------------------------------


def _run_count(registered) -> int:
    return len(registered["client"].search_runs([registered["experiment_id"], "0"]))


@pytest.mark.parametrize("bad_name", ["a/b", "", "  ", "name@alias", "x:y"])
def test_invalid_registered_model_name_is_refused_before_export(registered, bad_name):
    from rllib_mlflow import log_checkpoint

    runs_before = _run_count(registered)
    for checkpoint in (registered["checkpoint"].path, "/nonexistent/checkpoint"):
        start = time.perf_counter()
        # A missing checkpoint would raise CheckpointError if it were read first.
        with pytest.raises(RegistryError, match="registered model name|registered_model_name"):
            log_checkpoint(checkpoint, bad_name, tracking_uri=registered["uri"])
        assert time.perf_counter() - start < 2
    assert _run_count(registered) == runs_before


def test_unreachable_tracking_server_is_refused_quickly(registered):
    from rllib_mlflow import log_checkpoint

    dead = f"http://127.0.0.1:{free_port()}"
    for checkpoint in (registered["checkpoint"].path, "/nonexistent/checkpoint"):
        start = time.perf_counter()
        with pytest.raises(TrackingError, match="Cannot reach the MLflow tracking server") as info:
            log_checkpoint(checkpoint, NAME, tracking_uri=dead)
        assert time.perf_counter() - start < 10
        assert dead in str(info.value) and "MLFLOW_TRACKING_URI" in str(info.value)


def test_unknown_version_alias_or_iteration_lists_what_exists(registered):
    from rllib_mlflow import load_policy

    uri = registered["uri"]
    with pytest.raises(RegistryError, match=r"no version 99\. Existing versions: \[1, 2, 3\]"):
        load_policy(f"models:/{NAME}/99", tracking_uri=uri)
    with pytest.raises(RegistryError, match=r"no alias 'nope'. Existing aliases: \['best'\]"):
        load_policy(f"models:/{NAME}@nope", tracking_uri=uri)
    with pytest.raises(RegistryError, match=r"training_iteration=42.*iterations: \[1, 2, 3\]"):
        load_policy(NAME, training_iteration=42, tracking_uri=uri)
    with pytest.raises(RegistryError, match="training_iteration=N"):
        load_policy(NAME, tracking_uri=uri)


# -- 6. back to RLlib -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version, source",
    [("2", "recorded checkpoint URI"), ("3", "run artifacts (original deleted)")],
)
def test_download_checkpoint_restores_the_algorithm(registered, tmp_path, version, source):
    from ray.rllib.algorithms.algorithm import Algorithm

    from rllib_mlflow import download_checkpoint

    uri = registered["uri"]
    tags = registered["client"].get_model_version(NAME, version).tags
    if version == "3":
        assert not Path(tags["checkpoint_uri"]).exists()
    path = download_checkpoint(f"models:/{NAME}/{version}", str(tmp_path), tracking_uri=uri)
    assert Path(path).is_dir()
    algo = Algorithm.from_checkpoint(path)
    try:
        assert algo.iteration == registered["checkpoint"].training_iteration
        observations = cartpole_observations(16, seed=1)
        module = algo.get_module()
        import torch

        with torch.no_grad():
            logits = module.forward_inference({"obs": torch.from_numpy(observations)})
        actions = np.argmax(logits["action_dist_inputs"].numpy(), axis=-1)
        np.testing.assert_array_equal(
            actions, rllib_actions(registered["checkpoint"].path, observations)
        )
    finally:
        algo.stop()
