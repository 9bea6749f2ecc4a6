"""The light install: the built wheel without extras, in a fresh virtualenv, has neither Ray,
torch, TensorFlow nor Keras, imports every module of its tiers, and still loads, runs and
lists what a full install registered; the export side names the extra to install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mlflow_server import start_tracking_server, subprocess_env
from tests.tiers import LIGHT_TIERS, light_modules, tier_of

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("ray", "torch", "tensorflow", "keras", "gymnasium", "onnx")

LOAD = """
import importlib.util, json, sys
heavy = [m for m in sys.argv[3].split(",") if importlib.util.find_spec(m) is not None]
import rllib_mlflow
policy = rllib_mlflow.load_policy(sys.argv[2], tracking_uri=sys.argv[1])
observations = json.loads(sys.stdin.read())
print(json.dumps({"installed": heavy, "actions": policy.compute_actions(observations).tolist(),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[3])}))
"""

IMPORT_ALL = """
import importlib, json, sys
failed = {}
for name in sys.argv[1].split(","):
    try:
        importlib.import_module(name)
    except Exception as error:
        failed[name] = f"{type(error).__name__}: {error}"
heavy = sys.argv[2].split(",")
print(json.dumps({"failed": failed,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in heavy)}))
"""


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    # Without PYTHONPATH: pip would take this checkout (with its egg-info) for an install.
    kwargs.setdefault("env", _light_env())
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    """A fresh virtualenv with the project's wheel and its base dependencies only."""
    root = tmp_path_factory.mktemp("light")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root), str(ROOT)])
    wheel = next(root.glob("rllib_mlflow-*.whl"))
    _run([sys.executable, "-m", "venv", str(root / "venv")])
    pip = [str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, "-c", str(ROOT / "constraints.txt"), str(wheel)])
    return root / "venv"


@pytest.fixture(scope="module")
def registered(tmp_path_factory, trained_checkpoint):
    """A version registered by the full install, on a tracking server."""
    from rllib_mlflow import load_policy, log_checkpoint

    server = start_tracking_server(tmp_path_factory.mktemp("light_server"))
    checkpoint = trained_checkpoint("ppo_cartpole")
    log_checkpoint(checkpoint.path, "light", tracking_uri=server.uri, formats=["onnx"])
    env = checkpoint.make_env()
    observations = [env.observation_space.sample().tolist() for _ in range(16)]
    full = load_policy("models:/light@best", tracking_uri=server.uri)
    yield server, observations, full.compute_actions(observations).tolist()
    server.stop()


def _light_env() -> dict[str, str]:
    env = subprocess_env()
    env.pop("PYTHONPATH", None)  # the wheel, not this checkout
    return env


def test_the_light_install_loads_a_version_a_full_install_registered(light_venv, registered):
    server, observations, expected = registered
    done = _run(
        [str(light_venv / "bin" / "python"), "-c", LOAD, server.uri, "models:/light@best"]
        + [",".join(HEAVY)],
        input=json.dumps(observations),
        env=_light_env(),
        cwd=light_venv.parent,
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["installed"] == [], answer  # not even installed
    assert answer["loaded"] == []
    assert answer["actions"] == expected


def test_the_light_install_imports_every_module_of_its_tiers(light_venv):
    modules = light_modules()
    assert {tier_of(m) for m in modules} == set(LIGHT_TIERS), modules
    done = _run(
        [str(light_venv / "bin" / "python"), "-c", IMPORT_ALL, ",".join(modules), ",".join(HEAVY)],
        env=_light_env(),
        cwd=light_venv.parent,
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["failed"] == {}
    assert answer["loaded"] == []


def test_the_light_install_lists_versions(light_venv, registered):
    server, _, _ = registered
    done = _run(
        [str(light_venv / "bin" / "rllib-mlflow"), "versions", "light"]
        + ["--tracking-uri", server.uri, "--json"],
        env=_light_env(),
        cwd=light_venv.parent,
    )
    rows = json.loads(done.stdout)
    assert [row["version"] for row in rows] == [1]


def test_the_export_side_names_the_extra_to_install(light_venv, tmp_path):
    python = str(light_venv / "bin" / "python")
    done = subprocess.run(
        [python, "-c", "from rllib_mlflow import MLflowCheckpointCallback"],
        capture_output=True,
        text=True,
        env=_light_env(),
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "pip install 'rllib-mlflow[tune]'" in done.stderr.splitlines()[-1], done.stderr
    cli = str(light_venv / "bin" / "rllib-mlflow")
    done = subprocess.run(
        [cli, "export", str(tmp_path), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=_light_env(),
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "pip install 'rllib-mlflow[tune]'" in done.stderr and "Traceback" not in done.stderr
