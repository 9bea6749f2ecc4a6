"""Checkpoints written by older Ray releases (tests/archive/, made by tests/archive/
make_archive.py in each release's own virtualenv) export in every format and act as the
writing Ray itself did on its recorded episodes: through the files, `load_policy` of a
registered version, and `mlflow models serve`; a Tune experiment of an older Ray is
backfilled by `rllib-mlflow register`, one version per checkpoint. CI never installs an old
Ray: it reads the committed files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# conftest imported RLlib, which put TensorFlow in graph mode: eager again before any use.
import rllib_mlflow._tensorflow_first  # noqa: F401, I001
from rllib_mlflow.policy.actions import deterministic_actions
from rllib_mlflow.policy.observations import ObservationConverter
from rllib_mlflow.policy.serving import Policy
from tests.mlflow_server import post_json, start_model_server

pytestmark = pytest.mark.slow

ARCHIVE = Path(__file__).parent / "archive"
FORMATS = ("saved_model", "h5", "onnx")
TOLERANCE = 1e-5
CLI = str(Path(sys.executable).with_name("rllib-mlflow"))


def _manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(ARCHIVE.glob("ray-*/*/manifest.json")):
        manifest = json.loads(path.read_text())
        manifest["dir"] = path.parent
        found[f"{path.parent.parent.name}/{path.parent.name}"] = manifest
    return found


MANIFESTS = _manifests()
CHECKPOINTS = {name: m for name, m in MANIFESTS.items() if m["kind"] in ("algorithm", "policy")}
TUNE = {name: m for name, m in MANIFESTS.items() if m["kind"] == "tune"}

_EXPORT_ALL = """
import json, sys
from rllib_mlflow.export import export_checkpoint
done = {}
for name, (checkpoint, out) in json.loads(sys.argv[1]).items():
    try:
        exported = export_checkpoint(checkpoint, out, formats=sys.argv[2])
        done[name] = {e.module_id: str(e.path) for e in exported}
    except Exception as error:
        done[name] = f"{type(error).__name__}: {error}"
print(json.dumps(done))
"""


def _fresh_env() -> dict[str, str]:
    """The user's shell: no TF_USE_LEGACY_KERAS (rllib-mlflow sets it where it must)."""
    return {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}


def _checkpoint(manifest: dict[str, Any]) -> str:
    return str(manifest["dir"] / manifest["checkpoint"])


@pytest.fixture(scope="module")
def archive_exports(tmp_path_factory) -> dict[str, Any]:
    """{name: {policy_id: export dir} or the error}, exported in one fresh process."""
    root = tmp_path_factory.mktemp("archive_exports")
    jobs = {name: (_checkpoint(m), str(root / name)) for name, m in CHECKPOINTS.items()}
    proc = subprocess.run(
        [sys.executable, "-c", _EXPORT_ALL, json.dumps(jobs), ",".join(FORMATS)],
        capture_output=True, text=True, env=_fresh_env(), timeout=1500, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _truth(manifest: dict[str, Any], policy_id: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(manifest["dir"] / "truth.npz")
    return data[f"{policy_id}/obs"], data[f"{policy_id}/actions"]


def _assert_like_ray(want: np.ndarray, got: Any, discrete: bool, where: str) -> None:
    got = np.asarray(got).reshape(want.shape)
    if discrete:
        wrong = int(np.sum(want != got))
        assert wrong == 0, f"{where}: {wrong} of {len(want)} actions differ from Ray's"
    else:
        gap = float(np.max(np.abs(got - want)))
        assert gap <= TOLERANCE * max(1.0, float(np.max(np.abs(want)))), f"{where}: {gap}"


def test_the_archive_covers_what_users_have():
    """Ray releases from 2.3 to 2.5x, both stacks, TF2 and torch, algo.save(), Policy
    checkpoints and Tune experiments (tests/archive/README.md lists them)."""
    releases = {m["ray_version"].rsplit(".", 1)[0] for m in CHECKPOINTS.values()}
    assert {"2.3", "2.9", "2.30", "2.40", "2.55"} <= releases, releases
    assert {m["algorithm"] for m in MANIFESTS.values()} >= {"PPO", "APPO", "DQN", "SAC"}
    assert any("MeanStdFilter" in m["notes"] for m in MANIFESTS.values())
    assert {m["framework"] for m in MANIFESTS.values()} >= {"tf2", "torch"}
    assert {m["kind"] for m in MANIFESTS.values()} >= {"algorithm", "policy", "tune"}
    assert {m["api_stack"] for m in MANIFESTS.values()} == {"old", "new"}


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_every_format_acts_like_the_ray_that_wrote_it(archive_exports, name):
    import keras

    manifest = CHECKPOINTS[name]
    exports = archive_exports[name]
    assert isinstance(exports, dict), f"{name}: {exports}"
    assert sorted(exports) == sorted(manifest["policy_ids"])
    for policy_id, export_dir in exports.items():
        metadata = json.loads(Path(export_dir, "policy.json").read_text())
        assert metadata["formats"] == list(FORMATS), metadata["refused_formats"]
        assert metadata["parity"]["passed"]
        assert metadata["written_by_ray"] in (manifest["ray_version"], None)
        obs, want = _truth(manifest, policy_id)
        assert len(want) >= 20
        discrete = metadata["action_rule"]["distribution"] in ("categorical", "argmax")
        for backend in ("onnxruntime", "tensorflow"):
            got = Policy(export_dir, backend=backend).compute_actions(obs)
            _assert_like_ray(want, got, discrete, f"{name}/{policy_id} {backend}")
        h5 = keras.models.load_model(Path(export_dir, "model.h5"), safe_mode=True)
        flat = ObservationConverter(metadata).feeds(obs)["observations"]
        got = deterministic_actions(np.asarray(h5([flat])), metadata["action_rule"])
        _assert_like_ray(want, got, discrete, f"{name}/{policy_id} h5")


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory) -> dict[str, Any]:
    """The Tune experiments of older Rays (one per release), each registered by `rllib-mlflow
    register` into one SQLite store, under a name per release."""
    root = tmp_path_factory.mktemp("backfill")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    done = {}
    for name, manifest in TUNE.items():
        experiment = shutil.copytree(manifest["dir"] / "experiment", root / name / "experiment")
        model = f"archive-{name.replace('/', '-').replace('.', '-')}"
        proc = subprocess.run(
            [CLI, "register", str(experiment), "--name", model, "--tracking-uri", uri,
             "--formats", "onnx", "--json"],
            capture_output=True, text=True, env=_fresh_env(), timeout=900, check=False,
        )  # fmt: skip
        done[name] = {"model": model, "proc": proc, "experiment": experiment}
    return {"uri": uri, "registered": done}


@pytest.mark.parametrize("name", sorted(TUNE))
def test_a_tune_experiment_of_an_older_ray_is_backfilled(backfilled, name):
    """One version per checkpoint at its training iteration, and the last one, loaded without
    Ray, acts as the writing Ray did."""
    from mlflow import MlflowClient

    from rllib_mlflow import load_policy

    manifest, run = TUNE[name], backfilled["registered"][name]
    assert run["proc"].returncode == 0, run["proc"].stderr[-3000:]
    checkpoints = sorted(run["experiment"].glob("*/*/checkpoint_*"))
    versions = MlflowClient(backfilled["uri"]).search_model_versions(f"name='{run['model']}'")
    iterations = sorted(int(v.tags["training_iteration"]) for v in versions)
    assert len(versions) == len(checkpoints) >= 2
    assert iterations[-1] == manifest["training_iteration"]
    policy = load_policy(
        run["model"], training_iteration=iterations[-1], tracking_uri=backfilled["uri"]
    )
    obs, want = _truth(manifest, "default_policy")
    _assert_like_ray(want, policy.compute_actions(obs), True, f"{name} load_policy")


@pytest.fixture(scope="module")
def whole_archive(tmp_path_factory) -> dict[str, Any]:
    """Every algo.save() checkpoint of the archive, one folder per case, registered by one
    `rllib-mlflow register` of the folder above them (two at a time)."""
    root = tmp_path_factory.mktemp("whole_archive")
    folders = {}
    for name, manifest in CHECKPOINTS.items():
        if manifest["kind"] == "algorithm":  # a Policy checkpoint records no iteration
            folder = name.replace("/", "__").replace(".", "-")
            shutil.copytree(_checkpoint(manifest), root / "archive" / folder / "checkpoint")
            folders[folder] = name
    uri = f"sqlite:///{root / 'mlflow.db'}"
    proc = subprocess.run(
        [CLI, "register", str(root / "archive"), "--name", "whole-archive", "--tracking-uri",
         uri, "--formats", "onnx", "--workers", "2"],
        capture_output=True, text=True, env=_fresh_env(), timeout=1500, check=False,
    )  # fmt: skip
    return {"uri": uri, "proc": proc, "folders": folders}


def test_one_register_backfills_every_release_and_each_version_acts_as_it_did(whole_archive):
    """A folder of algo.save() checkpoints of five Ray releases, both stacks: one version
    each, and each loaded by `load_policy` acts as the Ray that wrote it did."""
    from mlflow import MlflowClient

    from rllib_mlflow import load_policy

    proc, uri = whole_archive["proc"], whole_archive["uri"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    versions = client.search_model_versions("name='whole-archive'")
    assert len(versions) == len(whole_archive["folders"])
    for version in versions:
        folder = client.get_run(version.run_id).info.run_name
        manifest = CHECKPOINTS[whole_archive["folders"][folder]]
        assert version.tags["training_iteration"] == str(manifest["training_iteration"])
        policy = load_policy(f"models:/whole-archive/{version.version}", tracking_uri=uri)
        obs, want = _truth(manifest, "default_policy")
        discrete = np.issubdtype(want.dtype, np.integer)
        _assert_like_ray(want, policy.compute_actions(obs), discrete, f"{folder} load_policy")


SERVED = sorted(n for n, m in CHECKPOINTS.items() if m["kind"] == "algorithm")


@pytest.mark.parametrize("name", SERVED)
def test_each_served_version_acts_as_the_ray_that_wrote_it(whole_archive, name, tmp_path):
    """`mlflow models serve` of each release's backfilled version, fed the recorded raw
    observations: the actions that release's EnvRunner sent."""
    from mlflow import MlflowClient

    client, uri = MlflowClient(whole_archive["uri"]), whole_archive["uri"]
    folder = {n: f for f, n in whole_archive["folders"].items()}[name]
    (version,) = [
        v
        for v in client.search_model_versions("name='whole-archive'")
        if client.get_run(v.run_id).info.run_name == folder
    ]
    obs, want = _truth(CHECKPOINTS[name], "default_policy")
    server = start_model_server(f"models:/whole-archive/{version.version}", uri, tmp_path / "log")
    try:
        status, body = post_json(f"{server.uri}/invocations", {"inputs": obs.tolist()})
    finally:
        server.stop()
    assert status == 200, body
    got = np.asarray(body["predictions"])
    _assert_like_ray(want, got, np.issubdtype(want.dtype, np.integer), f"{name} served")


def test_a_ray_1_checkpoint_is_refused_with_a_conversion_that_works(tmp_path):
    """A checkpoint Ray 1.13 wrote (one pickled checkpoint-N file): refused, naming the
    conversion that tests/archive/convert_ray1.py checked with Ray 2.9.3 and 2.3.1, not
    `algo.restore()`, which fails on it there."""
    manifest = MANIFESTS["ray-1.13.0/ppo_torch_cartpole"]
    proc = subprocess.run(
        [CLI, "export", _checkpoint(manifest), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, env=_fresh_env(), timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1, message
    for words in ("Ray 1.x and 2.0", "Ray 2.3 to 2.9", "'Ray 1.x and 2.0 checkpoints'"):
        assert words in message
    # The message names the page and its section, which holds the conversion.
    assert "docs/guides/archives.md" in message
    page = ARCHIVE.parent.parent / "docs" / "guides" / "archives.md"
    assert "## Ray 1.x and 2.0 checkpoints" in page.read_text()
    assert not (tmp_path / "out").exists()
