"""LiteRT exports: `tflite` (float32) acts exactly like RLlib on real episodes, `tflite_int8`
records how often it does and is refused below the threshold, and both load through
`load_policy(backend="litert")` from a real tracking server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rllib_mlflow.export import ALL_FORMATS, export_checkpoint, validate_formats
from rllib_mlflow.policy.serving import Policy
from tests import envs, test_export, test_user_policies
from tests.mlflow_server import mlflow_server  # noqa: F401

pytestmark = pytest.mark.slow

STATELESS = ["ppo_cartpole", "sac_pendulum", "ppo_image"]  # an MLP, a squashed Gaussian, a CNN
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def exported(trained_checkpoint, tmp_path_factory):
    """Factory: (config, formats, min agreement) -> (export dir, policy.json), made once."""
    root = tmp_path_factory.mktemp("litert")
    cache: dict = {}

    def get(name: str, formats=("onnx", "tflite", "tflite_int8"), min_agreement=0.99):
        key = (name, tuple(formats), min_agreement)
        if key not in cache:
            out = root / f"{name}-{len(cache)}"
            tc = trained_checkpoint(name)
            (policy,) = export_checkpoint(
                tc.path, out, formats=formats, min_int8_agreement=min_agreement
            )
            cache[key] = (out, policy.metadata)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def episodes(trained_checkpoint):
    """Factory: config -> (raw observations, actions RLlib's EnvRunner sent the env)."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            (cache[name],) = test_export.play_rllib_episodes(trained_checkpoint(name)).values()
        return cache[name]

    return get


def _assert_acts_like(want, got) -> None:
    want = np.asarray(want, np.float64)
    got = np.asarray(got, np.float64).reshape(want.shape)
    assert np.all(np.abs(want - got) <= TOLERANCE * np.maximum(1.0, np.abs(want)))


@pytest.mark.parametrize("name", STATELESS)
def test_tflite_acts_like_rllib_on_real_episodes(exported, episodes, name):
    out, policy_json = exported(name)
    assert (out / "model.tflite").is_file() and "tflite" in policy_json["formats"]
    assert policy_json["parity"]["formats"]["tflite"]["passed"]
    assert "TFLiteConverter" in policy_json["how"]["tflite"]
    observations, rllib_actions = episodes(name)
    policy = Policy(str(out), backend="litert")
    _assert_acts_like(rllib_actions, policy.compute_actions(observations))
    _assert_acts_like(rllib_actions[:1], policy.compute_actions(observations[0]))  # batch of 1


def test_tflite_without_saved_model_keeps_only_what_was_asked(exported):
    out, policy_json = exported("ppo_cartpole")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.onnx", "model.tflite", "model_int8.tflite", "policy.json"]
    )  # the SavedModel it was converted from is dropped
    assert policy_json["files"]["tflite_int8"] == "model_int8.tflite"


def test_a_stateful_policy_steps_through_litert_like_rllib(exported, trained_checkpoint):
    out, policy_json = exported("ppo_lstm", formats=("tflite", "tflite_int8"))
    assert policy_json["formats"] == ["tflite"]
    assert "stateful" in policy_json["refused_formats"]["tflite_int8"]
    assert policy_json["parity"]["formats"]["tflite"]["passed"]
    tc = trained_checkpoint("ppo_lstm")
    played = envs.rllib_episodes(
        tc.config, tc.path, lambda: envs.make_env(tc.env_id), test_user_policies.EPISODE_STEPS
    )
    case = test_user_policies.Case("ppo_lstm", tc, out, None, policy_json, played)
    policy = Policy(str(out), backend="litert")
    assert policy.is_stateful
    np.testing.assert_array_equal(test_user_policies.step_through(policy, case), case.rllib_actions)


def test_int8_records_its_agreement_with_rllib(exported, episodes):
    _, policy_json = exported("ppo_cartpole")
    record = policy_json["quantized"]["tflite_int8"]
    assert record["calibration"].startswith("CartPole-v1 episodes")
    report = record["agreement"]
    assert report["source"].startswith("CartPole-v1 episodes") and report["observations"] == 1000
    assert report["agreement"] >= 0.99 and report["passed"]
    # and on RLlib's own episodes, which the measure never saw
    observations, rllib_actions = episodes("ppo_cartpole")
    actions = Policy(str(exported("ppo_cartpole")[0]), backend="litert_int8").compute_actions(
        observations
    )
    assert np.mean(actions == rllib_actions) >= 0.99


def test_int8_of_a_continuous_policy_reports_its_error_relative_to_the_action_range(exported):
    _, policy_json = exported("sac_pendulum")
    report = policy_json["quantized"]["tflite_int8"]["agreement"]
    assert 0.0 <= report["p99_relative_error"] <= report["max_relative_error"] < 1.0
    assert report["passed"] == (report["agreement"] >= 0.99)


def test_int8_below_the_threshold_is_refused_and_the_others_written(exported):
    # Ray's action-masking module (a Dict observation, converted by onnx2tf): its masked
    # logits do not survive int8, which the agreement catches.
    out, policy_json = exported("ppo_action_masking")
    assert policy_json["formats"] == ["onnx", "tflite"]
    assert policy_json["parity"]["formats"]["tflite"]["passed"]  # float32 stays exact
    assert not (out / "model_int8.tflite").exists()
    why = policy_json["refused_formats"]["tflite_int8"]
    assert "of 1000 observations" in why and "below min_int8_agreement 99.0%" in why
    share = float(why.split("acts like RLlib on ")[1].split("%")[0])
    assert share < 99.0
    _, lenient = exported("ppo_action_masking", min_agreement=share / 100 - 0.01)
    assert "tflite_int8" in lenient["formats"]  # the user's threshold decides
    assert lenient["quantized"]["tflite_int8"]["agreement"]["agreement"] == pytest.approx(
        share / 100
    )


def test_format_names():
    assert validate_formats("onnx, tflite-int8") == ("onnx", "tflite_int8")
    with pytest.raises(ValueError, match="tflite_int8"):
        validate_formats(["tfjs"])
    assert set(ALL_FORMATS) >= {"saved_model", "h5", "onnx", "tflite", "tflite_int8"}


def test_registered_version_loads_with_litert_and_shows_its_agreement(
    mlflow_server,  # noqa: F811
    trained_checkpoint,
    episodes,
):
    from rllib_mlflow import load_policy, log_checkpoint

    tc = trained_checkpoint("ppo_cartpole")
    formats = ("saved_model", "onnx", "tflite", "tflite_int8")
    (version,) = log_checkpoint(tc.path, "litert", formats=formats, tracking_uri=mlflow_server.uri)
    assert version.tags["formats"] == ",".join(formats)
    assert float(version.tags["int8_agreement"]) >= 0.99
    observations, rllib_actions = episodes("ppo_cartpole")
    for backend in ("litert", "litert_int8"):
        policy = load_policy("models:/litert/1", backend=backend, tracking_uri=mlflow_server.uri)
        assert policy.backend == backend
        agreement = np.mean(policy.compute_actions(observations) == rllib_actions)
        assert agreement == 1.0 if backend == "litert" else agreement >= 0.99
    listed = subprocess.run(
        [sys.executable, "-m", "rllib_mlflow.cli", "versions", "litert", "--json"],
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri},
        capture_output=True,
        text=True,
        check=True,
    )
    (record,) = json.loads(listed.stdout)
    assert "tflite_int8" in record["formats"] and record["int8_agreement"] >= 0.99
    from mlflow import MlflowClient

    card = MlflowClient(mlflow_server.uri).get_model_version("litert", "1").description
    assert "`tflite_int8` acts like RLlib on" in card and "get_signature_runner" in card
