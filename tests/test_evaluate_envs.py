"""Evaluating on the user's own environments (issue 36): an env class configured by
env_config (evaluated with no flag), a name registered with a lambda (`--env module:callable`),
the Python API with a factory, a two-module multi-agent family, the one-line error, and the
replays and int8 calibration made in the same env."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

import rllib_mlflow
from rllib_mlflow import load_policy, log_checkpoint
from rllib_mlflow.envs import make_env
from rllib_mlflow.errors import EnvCreationError
from rllib_mlflow.play import family
from rllib_mlflow.rllib import pickles
from rllib_mlflow.rllib.env_record import env_record
from tests import custom_envs
from tests.conftest import _ppo
from tests.custom_envs import Corridor, make_corridor

CLI = str(Path(sys.executable).with_name("rllib-mlflow"))
CLASS_CONFIG = {"width": 5, "api_key": "s3cret"}  # the key is masked when recorded
LAMBDA_CONFIG = {"width": 4}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, "evaluate", *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip


def _train(config, directory: Path) -> str:
    """One iteration of `config`, saved: a checkpoint in seconds."""
    algo = config.build_algo()
    try:
        algo.train()
        algo.save(str(directory))
    finally:
        algo.stop()
    return str(directory)


@pytest.fixture(scope="module")
def registered(ray_session, tmp_path_factory):
    """`corridor` (the class env, with a replay at registration) and `corridor-lambda` (the
    Tune name registered with a lambda, with tflite_int8) in one store."""
    custom_envs.register()
    root = tmp_path_factory.mktemp("custom_envs")
    uri = f"sqlite:///{root}/mlflow.db"
    by_class = _ppo("CartPole-v1").environment(Corridor, env_config=CLASS_CONFIG)
    log_checkpoint(_train(by_class, root / "class"), "corridor", formats=["onnx"],
                   video=True, tracking_uri=uri)  # fmt: skip
    by_name = _ppo("CartPole-v1").environment(custom_envs.REGISTERED, env_config=LAMBDA_CONFIG)
    log_checkpoint(_train(by_name, root / "lambda"), "corridor-lambda",
                   formats=["onnx", "tflite_int8"], tracking_uri=uri)  # fmt: skip
    return uri


@pytest.fixture(scope="module")
def lambda_checkpoint(registered) -> str:
    return str(Path(registered.removeprefix("sqlite:///")).parent / "lambda")


@pytest.mark.slow
def test_a_class_env_is_recorded_and_evaluated_with_no_flag(registered):
    uri = registered
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version("corridor", "1")
    assert version.tags["env.make"] == "tests.custom_envs:Corridor"
    assert json.loads(version.tags["env.config"]) == {"width": 5, "api_key": "***"}
    assert "s3cret" not in json.dumps(version.tags) + (version.description or "")
    policy = load_policy("models:/corridor/1", tracking_uri=uri)
    assert policy.metadata["env"]["make"] == "tests.custom_envs:Corridor"
    assert policy.metadata["env"]["config"] == {"width": 5, "api_key": "***"}
    assert "| environment | `tests.custom_envs:Corridor` with env_config" in version.description
    assert version.tags["replay"] == "replay.gif"  # recorded at registration, in Corridor

    done = _cli("corridor", "--episodes", "3", "--seed", "5", "--video", "--json",
                "--tracking-uri", uri)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads(done.stdout)["versions"]
    assert result["replay"] == "replay.gif"
    expected = custom_envs.play(policy, {"width": 5}, episodes=3, seed=5)
    assert result["eval.episode_return_mean"] == pytest.approx(np.mean(expected))
    tags = client.get_model_version("corridor", "1").tags
    assert tags["eval.env_id"] == "tests.custom_envs:Corridor"


@pytest.mark.slow
def test_a_lambda_registered_env_says_what_to_pass_then_plays_with_env(registered):
    uri = registered
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    tags = client.get_model_version("corridor-lambda", "1").tags
    assert tags["env.make"] == custom_envs.REGISTERED  # a lambda: only the name is known

    failed = _cli("corridor-lambda", "--episodes", "1", "-q", "--tracking-uri", uri)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert "'corridor-registered'" in lines[0] and "--env module:callable" in lines[0]
    assert "env= in Python" in lines[0] and "NameNotFound" in lines[0]

    done = _cli("corridor-lambda", "--env", "tests.custom_envs:make_corridor", "--env-config",
                '{"width": 4, "max_steps": 6}', "--episodes", "3", "--json",
                "--tracking-uri", uri)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads(done.stdout)["versions"]
    policy = load_policy("models:/corridor-lambda/1", tracking_uri=uri)
    expected = custom_envs.play(policy, {"width": 4, "max_steps": 6}, episodes=3, seed=0)
    assert result["eval.episode_return_mean"] == pytest.approx(np.mean(expected))
    tags = client.get_model_version("corridor-lambda", "1").tags
    assert json.loads(tags["eval.env_config"]) == {"width": 4, "max_steps": 6}


@pytest.mark.slow
def test_int8_calibrates_on_the_registered_envs_observations(registered):
    """The export process knows the Tune name (training registered it): the int8 file is
    calibrated on the env's observations, not on samples of its observation space."""
    policy = load_policy("models:/corridor-lambda/1", tracking_uri=registered)
    quantized = policy.metadata["quantized"].get("tflite_int8") or {}
    refused = policy.metadata["refused_formats"].get("tflite_int8", "")
    source = (quantized.get("agreement") or {}).get("source", "") or refused
    assert "corridor-registered episodes" in source, (quantized, refused)
    assert "sampled" not in source


@pytest.mark.slow
def test_a_task_of_tunes_driver_records_the_registered_creator(registered, lambda_checkpoint):
    """Tune's driver knows a register_env name's creator, which its export workers do not:
    the callback's task carries it (`env_make`), and evaluate then needs no flag."""
    from rllib_mlflow.register.registration import register_task
    from rllib_mlflow.register.task import RegistrationSettings, RegistrationTask

    task = RegistrationTask(
        settings=RegistrationSettings(registered_model_name="corridor-by-task", formats=("onnx",)),
        checkpoint=lambda_checkpoint, checkpoint_uri=lambda_checkpoint, training_iteration=1,
        env_make="tests.custom_envs:make_corridor",
    )  # fmt: skip
    register_task(task, registered)
    client = MlflowClient(tracking_uri=registered, registry_uri=registered)
    tags = client.get_model_version("corridor-by-task", "1").tags
    assert tags["env.make"] == "tests.custom_envs:make_corridor"
    report = rllib_mlflow.evaluate("corridor-by-task", episodes=1, tracking_uri=registered,
                                   workers=1)  # fmt: skip
    assert report.env_id == "tests.custom_envs:make_corridor"


@pytest.mark.slow
def test_the_python_api_evaluates_with_a_factory_or_a_lambda(registered):
    report = rllib_mlflow.evaluate("corridor-lambda", env=make_corridor, episodes=2, seed=1,
                                   tracking_uri=registered, workers=1)  # fmt: skip
    policy = load_policy("models:/corridor-lambda/1", tracking_uri=registered)
    (result,) = report.versions
    assert list(result.returns) == custom_envs.play(policy, LAMBDA_CONFIG, episodes=2, seed=1)
    assert report.env_id == "tests.custom_envs:make_corridor" and report.best_version == 1
    # A lambda cannot reach a worker process: it is played here, with the given config.
    report = rllib_mlflow.evaluate("corridor", env=lambda config: Corridor(config),
                                   env_config={"width": 5, "max_steps": 3}, episodes=2,
                                   tracking_uri=registered)  # fmt: skip
    policy = load_policy("models:/corridor/1", tracking_uri=registered)
    expected = custom_envs.play(policy, {"width": 5, "max_steps": 3}, episodes=2, seed=0)
    assert list(report.versions[0].returns) == expected


@pytest.mark.slow
def test_a_two_module_multi_agent_family_plays_in_its_env(ray_session, tmp_path):
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from tests.custom_multi_agent import ParallelTwoCorridors, TwoCorridors, to_module

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    specs = {"m0": RLModuleSpec(), "m1": RLModuleSpec()}
    config = (
        _ppo("CartPole-v1")
        .environment(TwoCorridors, env_config=LAMBDA_CONFIG)
        .multi_agent(policies={"m0", "m1"}, policy_mapping_fn=to_module)
        .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs=specs))
    )
    log_checkpoint(_train(config, tmp_path / "duo"), "duo", formats=["onnx"], tracking_uri=uri)

    with pytest.raises(EnvCreationError) as caught:  # the mapping is code: not run
        rllib_mlflow.evaluate("duo", episodes=1, tracking_uri=uri)
    assert "--agent-module a0=MODULE --agent-module a1=MODULE" in str(caught.value)

    done = _cli("duo", "--agent-module", "a0=m0", "--agent-module", "a1=m1", "--episodes", "2",
                "--json", "--tracking-uri", uri)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = {v["registered_model"]: v for v in json.loads(done.stdout)["versions"]}
    assert set(results) == {"duo-m0", "duo-m1"}
    policies = {m: load_policy(f"models:/duo-{m}/1", tracking_uri=uri) for m in ("m0", "m1")}
    expected = _play_two_corridors(policies, episodes=2)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for module, agent in (("m0", "a0"), ("m1", "a1")):
        assert results[f"duo-{module}"]["eval.agents"] == {agent: np.mean(expected[agent])}
        tags = client.get_model_version(f"duo-{module}", "1").tags
        assert float(tags["eval.episode_return_mean"]) == pytest.approx(np.mean(expected[agent]))
        assert float(tags[f"eval.agent.{agent}.episode_return_mean"]) == pytest.approx(
            np.mean(expected[agent])
        )

    # The same env as a PettingZoo ParallelEnv, wrapped in RLlib's wrapper: the same episodes.
    report = rllib_mlflow.evaluate(
        "duo", env=ParallelTwoCorridors, env_config=LAMBDA_CONFIG, episodes=2,
        agent_modules={"a0": "m0", "a1": "m1"}, tracking_uri=uri,
    )  # fmt: skip
    played = {v.module_id: v.agents for v in report.versions}
    assert played == {"m0": {"a0": tuple(expected["a0"])}, "m1": {"a1": tuple(expected["a1"])}}


def _play_two_corridors(policies: dict, episodes: int) -> dict[str, list[float]]:
    from tests.custom_multi_agent import TwoCorridors

    env, returns = TwoCorridors(LAMBDA_CONFIG), {"a0": [], "a1": []}
    for episode in range(episodes):
        observations, _ = env.reset(seed=episode)
        totals, done = {"a0": 0.0, "a1": 0.0}, False
        while not done:
            actions = {
                agent: policies["m" + agent[-1]].compute_actions(np.asarray(obs)[None])[0]
                for agent, obs in observations.items()
            }
            observations, rewards, terminated, _, _ = env.step(actions)
            for agent, reward in rewards.items():
                totals[agent] += reward
            done = terminated["__all__"]
        for agent, total in totals.items():
            returns[agent].append(total)
    return returns


# -- without training -------------------------------------------------------------------------


def test_an_env_that_cannot_be_made_is_one_line_saying_what_to_pass():
    with pytest.raises(EnvCreationError) as caught:
        make_env("Corridor")
    message = str(caught.value)
    assert "\n" not in message and "NameNotFound" in message
    assert "--env module:callable" in message and "env= in Python" in message
    with pytest.raises(EnvCreationError, match="importing it failed .*ModuleNotFoundError"):
        make_env("no_such_module:Env")
    with pytest.raises(EnvCreationError, match=r"with env_config \{\} failed \(KeyError"):
        make_env("tests.custom_envs:Corridor")  # the width comes from the config
    env = make_env("tests.custom_envs:make_corridor", {"width": 3})
    assert env.observation_space.shape == (3,)


def test_the_env_record_reads_the_config_as_data(ray_session, tmp_path):
    """The class by its import path (a StandIn, never imported), the config masked and
    JSON-safe; a Tune name with a named function by the function, with a lambda by name."""
    from ray.tune.registry import register_env

    config = {"env": Corridor, "env_config": {"width": np.int64(3), "db_password": "x"},
              "policies": {"m0": None}, "policy_mapping_fn": {"a0": "m0"}}  # fmt: skip
    record = env_record(pickles.loads(pickle.dumps(config), tmp_path / "config.pkl"))
    assert record == {
        "id": "tests.custom_envs:Corridor", "make": "tests.custom_envs:Corridor",
        "config": {"width": 3, "db_password": "***"}, "modules": ["m0"],
        "agent_to_module": {"a0": "m0"}, "mapping_fn": None,
    }  # fmt: skip
    register_env("corridor-by-function", make_corridor)
    named = env_record({"env": "corridor-by-function"}) or {}
    assert named["make"] == "tests.custom_envs:make_corridor"
    custom_envs.register()
    by_lambda = env_record({"env": custom_envs.REGISTERED}) or {}
    assert by_lambda["make"] == custom_envs.REGISTERED


def test_agents_map_to_modules_by_data_or_by_their_own_id():
    assert family.agent_mapping(["m0", "m1"], ["m0", "m1"], {}, {}) == {}  # agent id = module id
    assert family.agent_mapping(["a0", "a1"], ["default_policy"], {}, {})  # one module: all
    assert family.agent_mapping(["a0"], ["m0", "m1"], {"a0": "m0"}, {"a0": "m1"}) == {"a0": "m1"}
    with pytest.raises(EnvCreationError, match="--agent-module a1=MODULE"):
        family.agent_mapping(["a0", "a1"], ["m0", "m1"], {"a0": "m0"}, {})
