"""The light install: the built wheel without extras, in a fresh virtualenv, has neither Ray,
torch, TensorFlow nor Keras, imports every module of its tiers, and still loads, runs and
lists what a full install registered, and downloads its checkpoint, from every server a team
runs: one proxying its artifacts, one whose clients read a shared directory, one whose clients
read an S3 bucket (with `[s3]`). A SQLite store and the export side name what to install.

The venv and the servers are made once for the module."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stack import services
from tests.mlflow_server import free_port, start_process, start_tracking_server, subprocess_env
from tests.stack import kill, start_seaweedfs
from tests.tiers import LIGHT_TIERS, light_modules, tier_of

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("ray", "torch", "tensorflow", "keras", "gymnasium", "onnx")
MODEL = "light"
STORES = ("proxied_store", "local_store", "s3_store")

LOAD = """
import importlib.util, json, sys
heavy = [m for m in sys.argv[3].split(",") if importlib.util.find_spec(m) is not None]
import rllib_mlflow
policy = rllib_mlflow.load_policy(sys.argv[2], tracking_uri=sys.argv[1])
observations = json.loads(sys.stdin.read())
print(json.dumps({"installed": heavy, "actions": policy.compute_actions(observations).tolist(),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[3]),
                  "mlflow_imported": "mlflow" in sys.modules}))
"""

LOAD_ONLY = """
import rllib_mlflow, sys
rllib_mlflow.load_policy(sys.argv[1], tracking_uri=sys.argv[2])
"""

DOWNLOAD = """
import json, pathlib, sys
import rllib_mlflow
path = rllib_mlflow.download_checkpoint(sys.argv[2], sys.argv[3], tracking_uri=sys.argv[1])
files = sorted(str(p.relative_to(path)) for p in pathlib.Path(path).rglob("*"))
print(json.dumps({"files": files}))
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
def light_venv_s3(light_venv, s3_store) -> tuple[Path, str]:
    """The light venv once `[s3]` is installed in it, and what loading from the S3 store
    said before (without boto3)."""
    before = subprocess.run(
        [str(light_venv / "bin" / "python"), "-c", LOAD, s3_store.uri, f"models:/{MODEL}@best"]
        + [",".join(HEAVY)],
        input=json.dumps(s3_store.observations),
        capture_output=True,
        text=True,
        env=_light_env(**s3_store.client_env),
        cwd=light_venv.parent,
    )
    assert before.returncode == 1, before.stdout + before.stderr
    wheel = next(light_venv.parent.glob("rllib_mlflow-*.whl"))
    python = str(light_venv / "bin" / "python")
    _run(
        [python, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), f"{wheel}[s3]"]
    )
    return light_venv, before.stderr.strip().splitlines()[-1]


@dataclass
class Store:
    """A tracking server holding version 1 of MODEL, registered by the full install."""

    uri: str
    root: Path  # the server's directory (its SQLite database: root/mlflow.db)
    observations: list
    expected: list  # the full install's actions
    checkpoint_files: list[str]
    client_env: dict[str, str] = field(default_factory=dict)  # to read its artifacts


@pytest.fixture(scope="module")
def cartpole(trained_checkpoint):
    checkpoint = trained_checkpoint("ppo_cartpole")
    env = checkpoint.make_env()
    return checkpoint, [env.observation_space.sample().tolist() for _ in range(16)]


def _register(server, root: Path, cartpole, client_env: dict[str, str] | None = None) -> Store:
    """Version 1 of MODEL on `server`, with its checkpoint, and the full install's actions."""
    from rllib_mlflow import load_policy, log_checkpoint

    checkpoint, observations = cartpole
    with pytest.MonkeyPatch.context() as patch:  # the full install's S3 settings
        for key, value in (client_env or {}).items():
            patch.setenv(key, value)
        log_checkpoint(
            checkpoint.path, MODEL, tracking_uri=server.uri, formats=["onnx"],
            log_rllib_checkpoint=True,
        )  # fmt: skip
        full = load_policy(f"models:/{MODEL}@best", tracking_uri=server.uri)
    files = sorted(str(p.relative_to(checkpoint.path)) for p in Path(checkpoint.path).rglob("*"))
    return Store(
        server.uri, root, observations, full.compute_actions(observations).tolist(), files,
        dict(client_env or {}),
    )  # fmt: skip


@pytest.fixture(scope="module")
def proxied_store(tmp_path_factory, cartpole):
    """`mlflow server` proxying its artifacts (its default)."""
    root = tmp_path_factory.mktemp("proxied_server")
    server = start_tracking_server(root)
    yield _register(server, root, cartpole)
    server.stop()


@pytest.fixture(scope="module")
def local_store(tmp_path_factory, cartpole):
    """`mlflow server --no-serve-artifacts --default-artifact-root <dir>`: clients read and
    write the directory themselves (a shared filesystem)."""
    root = tmp_path_factory.mktemp("local_server")
    server = start_tracking_server(root, proxy_artifacts=False)
    yield _register(server, root, cartpole)
    server.stop()


@pytest.fixture(scope="module")
def s3_store(tmp_path_factory, cartpole):
    """`mlflow server --no-serve-artifacts --default-artifact-root s3://mlflow/artifacts` on
    SeaweedFS: clients read and write the bucket with their own credentials."""
    root = tmp_path_factory.mktemp("s3_server")
    access_key, secret_key = "rllibmlflow", "aws-" + secrets.token_hex(16)
    seaweed, endpoint = start_seaweedfs(root, access_key, secret_key)
    client_env = {
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": services.S3_REGION,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }
    try:
        server = start_tracking_server(
            root, proxy_artifacts=False, artifact_root="s3://mlflow/artifacts", env=client_env
        )
        try:
            yield _register(server, root, cartpole, client_env)
        finally:
            server.stop()
    finally:
        kill(seaweed)


def _light_env(**extra: str) -> dict[str, str]:
    env = subprocess_env(**extra)
    env.pop("PYTHONPATH", None)  # the wheel, not this checkout
    return env


def _light_python(request, store_fixture: str) -> tuple[Path, Store]:
    """The light venv (with `[s3]` for the S3 store) and the store."""
    store = request.getfixturevalue(store_fixture)
    if store_fixture == "s3_store":
        return request.getfixturevalue("light_venv_s3")[0], store
    return request.getfixturevalue("light_venv"), store


@pytest.mark.parametrize("store_fixture", STORES)
def test_the_light_install_loads_a_version_a_full_install_registered(request, store_fixture):
    venv, store = _light_python(request, store_fixture)
    done = _run(
        [str(venv / "bin" / "python"), "-c", LOAD, store.uri, f"models:/{MODEL}@best"]
        + [",".join(HEAVY)],
        input=json.dumps(store.observations),
        env=_light_env(**store.client_env),
        cwd=venv.parent,
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["installed"] == [], answer  # not even installed
    assert answer["loaded"] == []
    assert answer["mlflow_imported"] is False  # REST, then the files straight from the store
    assert answer["actions"] == store.expected


@pytest.mark.parametrize("store_fixture", STORES)
def test_the_light_install_downloads_the_checkpoint(request, store_fixture, tmp_path):
    venv, store = _light_python(request, store_fixture)
    done = _run(
        [str(venv / "bin" / "python"), "-c", DOWNLOAD, store.uri, f"models:/{MODEL}/1"]
        + [str(tmp_path / "checkpoint")],
        env=_light_env(**store.client_env),
        cwd=venv.parent,
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["files"] == store.checkpoint_files


@pytest.mark.parametrize("store_fixture", STORES)
def test_the_light_install_lists_versions(request, store_fixture):
    venv, store = _light_python(request, store_fixture)
    done = _run(
        [str(venv / "bin" / "rllib-mlflow"), "versions", MODEL]
        + ["--tracking-uri", store.uri, "--json"],
        env=_light_env(**store.client_env),
        cwd=venv.parent,
    )
    rows = json.loads(done.stdout)
    assert [row["version"] for row in rows] == [1]


def test_without_the_s3_extra_an_s3_store_names_it(light_venv_s3):
    _, message = light_venv_s3
    assert message.endswith("needs boto3, which this install of rllib-mlflow leaves out: "
                            "pip install 'rllib-mlflow[s3]'"), message  # fmt: skip
    assert "s3://mlflow/artifacts/" in message


def test_a_store_it_does_not_read_names_what_to_install(light_venv, tmp_path):
    """A server naming a gs:// artifact location (tests/hostile_server.py answers as one)."""
    port = free_port()
    server = start_process(
        [sys.executable, "-m", "tests.hostile_server", str(port), "store", str(tmp_path)]
        + ["gs://team-models/1/models/m-1/artifacts"],
        f"http://127.0.0.1:{port}",
        "/api/2.0/mlflow/model-versions/get",
        tmp_path / "server.log",
        cwd=ROOT,
    )
    try:
        done = subprocess.run(
            [str(light_venv / "bin" / "python"), "-c", LOAD_ONLY, "models:/adv/1", server.uri],
            capture_output=True, text=True, env=_light_env(), cwd=light_venv.parent,
        )  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "rllib_mlflow.extras.MissingExtraError: The model's files are in gs:// "
        "(gs://team-models/...), which the light install of rllib-mlflow does not read (it reads "
        "local paths, mounts and s3://): pip install mlflow google-cloud-storage, or serve the "
        "artifacts through the tracking server (mlflow server --serve-artifacts)."
    ), done.stderr


def test_a_sqlite_store_says_in_one_line_what_to_install(light_venv, proxied_store):
    """The database the proxying server runs on, read by the light install itself."""
    uri = f"sqlite:///{proxied_store.root / 'mlflow.db'}"
    python = str(light_venv / "bin" / "python")
    done = subprocess.run(
        [python, "-c", LOAD_ONLY, f"models:/{MODEL}/1", uri],
        capture_output=True, text=True, env=_light_env(), cwd=light_venv.parent,
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"rllib_mlflow.extras.MissingExtraError: {uri} is a SQLite database, which only "
        "MLflow's full install reads (this install of rllib-mlflow has mlflow-skinny): pip "
        f"install mlflow, or start `mlflow server --backend-store-uri {uri}` and pass its "
        "http:// address."
    ), done.stderr
    assert "UnsupportedModelRegistryStoreURIException" not in done.stderr
    cli = str(light_venv / "bin" / "rllib-mlflow")
    done = subprocess.run(
        [cli, "versions", MODEL, "--tracking-uri", uri],
        capture_output=True, text=True, env=_light_env(), cwd=light_venv.parent,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"rllib-mlflow: error: {last.split(': ', 1)[1]}"], (
        done.stderr
    )


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
