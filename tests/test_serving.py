"""A registered policy served by the real `mlflow models serve --env-manager local`.

First from this virtualenv, then from a fresh one that holds only mlflow and onnxruntime
(no Ray, no torch, no rllib-mlflow); both must answer with RLlib's own actions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.mlflow_server import (  # noqa: F401
    mlflow_server,
    post_json,
    start_model_server,
    subprocess_env,
)
from tests.policies import cartpole_observations, rllib_actions

pytestmark = pytest.mark.slow

NAME = "cartpole-served"
CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


@pytest.fixture(scope="module")
def registered(mlflow_server, trained_checkpoint):  # noqa: F811
    """NAME version 1 (all formats, and `best`) from a trained PPO CartPole checkpoint, with
    observations from real episodes and RLlib's actions for them."""
    from rllib_mlflow import log_checkpoint

    ckpt = trained_checkpoint("ppo_cartpole")
    (version,) = log_checkpoint(
        ckpt.path,
        NAME,
        metrics={"env_runners": {"episode_return_mean": 21.0}},
        tracking_uri=mlflow_server.uri,
    )
    assert version.version == "1"
    observations = cartpole_observations(200, seed=3)
    return {
        "uri": mlflow_server.uri,
        "observations": observations,
        "expected": rllib_actions(ckpt.path, observations),
    }


@pytest.fixture(scope="module")
def served(registered, tmp_path_factory):
    """`mlflow models serve -m models:/NAME/1` from this virtualenv."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    server = start_model_server(f"models:/{NAME}/1", registered["uri"], log)
    try:
        yield server
    finally:
        server.stop()


def _predictions(server, payload) -> np.ndarray:
    status, body = post_json(f"{server.uri}/invocations", payload)
    assert status == 200, body
    return np.asarray(body["predictions"])


def test_served_actions_equal_rllib(served, registered):
    observations, expected = registered["observations"], registered["expected"]
    np.testing.assert_array_equal(_predictions(served, {"inputs": observations.tolist()}), expected)
    for i in range(3):  # one observation per request, as an environment loop would send
        single = _predictions(served, {"inputs": [observations[i].tolist()]})
        assert single.tolist() == [expected[i]]


def test_explore_and_dist_inputs_params(served, registered):
    observations = registered["observations"][:50].tolist()
    sampled = _predictions(served, {"inputs": observations, "params": {"explore": True}})
    assert sampled.shape == (50,) and set(sampled.tolist()) <= {0, 1}
    seeded = {"inputs": observations, "params": {"explore": True, "seed": 7}}
    np.testing.assert_array_equal(_predictions(served, seeded), _predictions(served, seeded))
    status, body = post_json(
        f"{served.uri}/invocations",
        {"inputs": observations, "params": {"return_dist_inputs": True}},
    )
    assert status == 200, body
    predictions = body["predictions"]
    np.testing.assert_array_equal(predictions["actions"], registered["expected"][:50])
    assert np.asarray(predictions["action_dist_inputs"]).shape == (50, 2)


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"inputs": [[0.1, 0.2, 0.3]]}, r"has shape \[1, 3\]; expected shape \[N, 4\]"),
        ({"inputs": [[[0.1, 0.2, 0.3, 0.4]]]}, r"has shape \[1, 1, 4\]; expected shape \[N, 4\]"),
        ({"inputs": []}, r"The batch of observations is empty: send at least one; expected shape"),
        (b'{"inputs": [[NaN, 0.0, 0.0, 0.0]]}', "NaN or infinite"),
        (b'{"inputs": [[Infinity, 0.0, 0.0, 0.0]]}', "NaN or infinite"),
        ({"inputs": [["a", "b", "c", "d"]]}, "could not convert string to float"),
        (b"not json", "valid JSON"),
        ({"observations": [[0.0, 0.0, 0.0, 0.0]]}, "with 'inputs' key"),
        # The model checks its own input (its signature says what to send, not what MLflow
        # enforces): requests come as {"inputs": ...}, see docs/raw-observations.md.
        ({"instances": [[0.0, 0.0, 0.0, 0.0]]}, "with 'inputs' key"),
        ({"dataframe_split": {"data": [[0.0, 0.0, 0.0, 0.0]]}}, "with 'inputs' key"),
    ],
    ids=[
        *("short", "nested", "empty", "nan", "inf", "strings", "not-json", "no-inputs"),
        *("instances", "dataframe"),
    ],
)
def test_malformed_requests_get_a_4xx_with_a_clear_message(served, payload, message):
    status, body = post_json(f"{served.uri}/invocations", payload)
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and body.get("message"), body
    import re

    assert re.search(message, body["message"]), body["message"]


# -- a fresh virtualenv: mlflow and onnxruntime only --------------------------------------


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A new virtualenv (no system site-packages) with only mlflow, onnxruntime and deps."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=120)
    env = _bare_env(venv)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS)]
        + ["mlflow", "onnxruntime"],
        capture_output=True,
        text=True,
        env=env,
        cwd=venv,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def _bare_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def test_fresh_virtualenv_serves_rllib_actions(bare_venv, registered, tmp_path):
    env = _bare_env(bare_venv)
    probe = subprocess.run(
        [
            str(bare_venv / "bin" / "python"),
            "-c",
            "import importlib.util, json, sys; print(json.dumps({'prefix': sys.prefix, "
            "'found': [m for m in ('ray', 'torch', 'rllib_mlflow', 'tensorflow') "
            "if importlib.util.find_spec(m)], "
            "'have': [m for m in ('mlflow', 'onnxruntime') if importlib.util.find_spec(m)]}))",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    info = json.loads(probe.stdout)
    assert Path(info["prefix"]) == bare_venv
    assert info["found"] == []
    assert info["have"] == ["mlflow", "onnxruntime"]

    start = time.perf_counter()
    server = start_model_server(
        f"models:/{NAME}@best",
        registered["uri"],
        tmp_path / "serve.log",
        mlflow_executable=str(bare_venv / "bin" / "mlflow"),
        env=env,
    )
    try:
        startup = time.perf_counter() - start
        observations, expected = registered["observations"], registered["expected"]
        np.testing.assert_array_equal(
            _predictions(server, {"inputs": observations.tolist()}), expected
        )
        status, body = post_json(f"{server.uri}/invocations", {"inputs": [[0.1, 0.2]]})
        assert status == 400 and "expected shape" in body["message"]
    finally:
        server.stop()
    print(f"fresh-venv model server ready in {startup:.1f} s")


def test_fresh_virtualenv_serves_a_stateful_policy(
    bare_venv, registered, trained_checkpoint, tmp_path
):
    """An LSTM reading previous actions and rewards, served with neither Ray, torch nor
    rllib-mlflow installed: the state goes out and comes back as named tensors, and the
    actions are load_policy's (which tests/test_user_policies.py proves equal to RLlib's)."""
    from rllib_mlflow import load_policy, log_checkpoint

    checkpoint = trained_checkpoint("ppo_lstm_prev").path
    (version,) = log_checkpoint(checkpoint, "lstm-served", tracking_uri=registered["uri"])
    uri = f"models:/lstm-served/{version.version}"
    local = load_policy(uri, tracking_uri=registered["uri"])
    server = start_model_server(
        uri,
        registered["uri"],
        tmp_path / "serve.log",
        mlflow_executable=str(bare_venv / "bin" / "mlflow"),
        env=_bare_env(bare_venv),
    )
    try:
        rng = np.random.default_rng(0)
        state, reward = local.initial_state(1), 0.0
        served_state = {f"state_{k}": v.tolist() for k, v in state.items()}  # zeros
        for _ in range(12):
            obs = rng.uniform(-1, 1, 3).astype(np.float32)
            want, state = local.step(obs, state, prev_rewards=[reward])
            inputs = {"observations": [obs.tolist()], "prev_rewards": [reward], **served_state}
            status, body = post_json(f"{server.uri}/invocations", {"inputs": inputs})
            assert status == 200, body
            assert body["predictions"]["actions"] == want.tolist()
            served_state = {k: v for k, v in body["predictions"].items() if k != "actions"}
            reward = float(rng.normal())
    finally:
        server.stop()
