"""Faults with real processes: the tracking server killed and restarted mid-training, the
driver killed with SIGKILL during exports, Ctrl-C during the final flush, export workers
killed mid-export and a full disk for temporary export files, the S3 object store behind
the tracking server killed and restarted mid-training; four trials registering into one
model; a served version with pickle deserialization disabled; planted credentials that must
appear nowhere.

Every test runs Tune in a subprocess (`tests.tune_job.run`) and checks the registry
afterwards: one version per trial and training iteration, never two.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rllib_mlflow.scratch import EXPORT_PREFIX
from rllib_mlflow.tune.journal import JOURNAL_FILE
from rllib_mlflow.tune.staging import STAGING_DIR
from tests import tune_job
from tests.mlflow_server import (
    TORCH_ONLY,
    VENV_BIN,
    post_json,
    start_model_server,
    start_tracking_server,
    subprocess_env,
)
from tests.mlflow_server import free_port as _free_port
from tests.stack import running_stack

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
MODEL = tune_job.MODEL_NAME
PLANTED = {
    "MLFLOW_TRACKING_USERNAME": "planted-user-5e1f",
    "MLFLOW_TRACKING_PASSWORD": "planted-password-9c3a7b",
    "AWS_ACCESS_KEY_ID": "PLANTEDKEYID4417",
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-2d8e0f",
}

JOB = """
import json, sys
import ray
from tests import tune_job
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
results = tune_job.run(**json.loads(sys.argv[1]))
ray.shutdown()
if results.errors:
    raise SystemExit(f"trials failed: {results.errors}")
print("rllib-mlflow-test: job done", flush=True)
"""


# -- helpers -------------------------------------------------------------------------------


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(uri: str) -> list:
    return _client(uri).search_model_versions(f"name = '{MODEL}'", max_results=1000)


def _keys(versions) -> list[tuple[str, int]]:
    return [(v.tags["trial_id"], int(v.tags["training_iteration"])) for v in versions]


def _job_command(storage: Path, uri: str, iterations: int, **kwargs) -> list[str]:
    args = {
        "storage": str(storage),
        "tracking_uri": uri,
        "iterations": iterations,
        "num_to_keep": None,
        "learning_rates": kwargs.pop("learning_rates", [1e-3]),
        "seconds_per_iteration": kwargs.pop("seconds_per_iteration", 0),
        "stop_file": kwargs.pop("stop_file", None),
        "callback_kwargs": {"formats": ["onnx"], **kwargs.pop("callback_kwargs", {})},
    }
    assert not kwargs, kwargs
    return [sys.executable, "-c", JOB, json.dumps(args)]


def _start_job(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    stream = open(log, "wb")  # noqa: SIM115 (closed below; the child keeps its copy)
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env or _env(),
        stdout=stream,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: we signal it like a terminal would
    )
    stream.close()
    return process


def _env(**extra: str) -> dict[str, str]:
    return subprocess_env(PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", **TORCH_ONLY, **extra)


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the job exited ({process.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _events(journal: Path, event: str) -> int:
    return journal.read_text().count(f'"event": "{event}"') if journal.exists() else 0


def _finish(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    """Whatever the job left in its process group (Ray's daemons), but not the worker,
    which runs in its own session and must stop by itself."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def _persisted(experiment: Path) -> set[tuple[str, int]]:
    """(trial id, training iteration) of every checkpoint on disk. The trial id comes from
    the trial directory's name: after a SIGKILL, Tune's result.json may be empty."""
    from rllib_mlflow.rllib.layout import read_training_iteration

    found = set()
    for checkpoint in experiment.glob("*/checkpoint_*"):
        trial_id = re.search(r"_([0-9a-f]{5}_\d{5})_", checkpoint.parent.name).group(1)
        found.add((trial_id, read_training_iteration(str(checkpoint))))
    return found


def _sync(experiment: Path, uri: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [os.path.join(VENV_BIN, "rllib-mlflow"), "sync", str(experiment), "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=300,
        env=env or _env(),
    )


def _assert_exactly_once(uri: str, expected: set[tuple[str, int]]) -> list:
    versions = _versions(uri)
    keys = _keys(versions)
    assert len(keys) == len(set(keys)), collections.Counter(keys).most_common(3)
    assert set(keys) == expected
    return versions


def _workers_of(pid: int) -> list[int]:
    """The export worker processes started by `pid`."""
    return _children_of(pid, b"rllib_mlflow.tune.worker")


def _children_of(pid: int, marker: bytes) -> list[int]:
    """The processes `pid` started whose command line holds `marker`."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and marker in cmdline:
            children.append(int(entry.name))
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- 1. the tracking server killed in the middle of training, restarted 20 s later ------


def _tracking_server(root: Path, port: int):
    # A fresh log per start: the test restarts the server on the same port.
    return start_tracking_server(root, port=port, log_name=f"server-{time.monotonic_ns()}.log")


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    """Two trials of 8 iterations of 1 s; the server dies after the first registrations
    and comes back on the same port 20 s later. Credentials are planted in the job's
    environment for the secrets scan."""
    root = tmp_path_factory.mktemp("outage")
    port = _free_port()
    server = _tracking_server(root, port)
    experiment = root / "results" / tune_job.EXPERIMENT
    journal = experiment / JOURNAL_FILE
    command = _job_command(
        root / "results",
        server.uri,
        8,
        learning_rates=[1e-3, 3e-4],
        seconds_per_iteration=1.0,
        callback_kwargs={"experiment_name": "outage", "tags": {"team": "rl"}},
    )
    log = root / "job.log"
    process = _start_job(command, log, _env(**PLANTED))
    try:
        _wait_for(lambda: _events(journal, "registered") >= 1, 240, "a registration", process)
        server.stop()  # SIGTERM to the group, SIGKILL if it lingers
        down_at = time.monotonic()
        time.sleep(20)
        assert process.poll() is None, "the job ended during the outage"
        server = _tracking_server(root, port)
        outage_s = time.monotonic() - down_at
        returncode = _finish(process, timeout=400)
        output = log.read_text(errors="replace")
        after_job = _keys(_versions(server.uri))
        sync = _sync(experiment, server.uri, _env(**PLANTED))
        yield {
            "uri": server.uri,
            "root": root,
            "experiment": experiment,
            "returncode": returncode,
            "output": output,
            "after_job": after_job,
            "sync": sync,
            "outage_s": outage_s,
        }
    finally:
        if process.poll() is None:
            _kill_group(process)
        server.stop()


def test_server_outage_neither_fails_nor_stalls_training(outage):
    assert outage["returncode"] == 0, outage["output"][-4000:]
    assert outage["outage_s"] >= 20
    for result in outage["experiment"].glob("*/result.json"):
        stamps = [json.loads(line)["timestamp"] for line in result.read_text().splitlines()]
        assert len(stamps) == 8
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        assert max(gaps) < 15, gaps  # iterations go on at their pace while the server is down


def test_server_outage_is_told_when_it_begins_and_ends_and_without_a_traceback(outage):
    """A 20 s outage, which MLflow's own HTTP retries absorb (our retries never see a
    failure), is told all the same: once when its first request fails, once when the
    server answers again (issue 37); no traceback, no doubled prefix, no line per retry."""
    output = outage["output"]
    begun = output.count("cannot reach the tracking server or artifact store")
    assert begun >= 1, output[-4000:]
    assert output.count("reachable again after") == begun, output[-4000:]
    assert "retrying in" not in output, output[-4000:]  # the per-retry lines: debug only
    assert "rllib-mlflow: rllib-mlflow:" not in output
    assert "Traceback" not in output, output[-4000:]


def test_mlflow_http_retries_are_told_as_an_outage(monkeypatch, caplog):
    """MLflow's REST client retries a 503 itself and succeeds: our retries never see the
    fault, and the outage is still told, begin and end, each once (a real HTTP server
    that answers 503 twice)."""
    import http.server
    import threading

    from rllib_mlflow.retries import with_retries

    answers = iter([503, 503])

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status = next(answers, 200)
            body = json.dumps({"experiments": []} if status == 200 else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # MLflow searches with POST

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with caplog.at_level("INFO", logger="rllib_mlflow"):
            assert with_retries(lambda: _client(uri).search_experiments()) == []
    finally:
        server.shutdown()
    told = [r.getMessage() for r in caplog.records if r.name.startswith("rllib_mlflow")]
    assert len(told) == 2, told
    assert told[0].startswith("cannot reach the tracking server or artifact store (HTTP 503")
    assert told[1].startswith("reachable again after"), told


def test_server_outage_loses_and_duplicates_no_checkpoint(outage):
    expected = _persisted(outage["experiment"])
    assert len(expected) == 16
    # The job itself registers every checkpoint: its retries outlast the outage.
    after_job = outage["after_job"]
    assert len(after_job) == len(set(after_job)), collections.Counter(after_job)
    assert set(after_job) == expected, outage["output"][-4000:]
    # And sync afterwards finds nothing to add.
    assert outage["sync"].returncode == 0, outage["sync"].stderr[-3000:]
    versions = _assert_exactly_once(outage["uri"], expected)
    assert sorted(int(v.version) for v in versions) == list(range(1, 17))


def test_planted_credentials_appear_nowhere(outage):
    """Credentials in the job's environment never reach params, tags, artifacts (runs and
    models, downloaded), the journal, the experiment directory or the logs."""
    uri, root = outage["uri"], outage["root"]
    client = _client(uri)
    import mlflow

    haystacks: dict[str, bytes] = {
        "job log": outage["output"].encode(),
        "sync output": (outage["sync"].stdout + outage["sync"].stderr).encode(),
    }
    for path in outage["experiment"].rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            haystacks[f"experiment:{path.name}"] = path.read_bytes()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=100)
    assert len(runs) == 2
    downloads = root / "downloads"
    for run in runs:
        haystacks[f"run {run.info.run_id}"] = json.dumps(
            {"params": run.data.params, "tags": run.data.tags}
        ).encode()
        client.download_artifacts(run.info.run_id, "", str(downloads / run.info.run_id))
    for version in _versions(uri):
        haystacks[f"version {version.version}"] = json.dumps(version.tags).encode()
        model = client.get_logged_model(version.model_id or version.source.removeprefix("models:/"))
        haystacks[f"model {model.model_id}"] = json.dumps(
            {"tags": model.tags, "params": model.params}
        ).encode()
        mlflow.set_tracking_uri(uri)
        mlflow.artifacts.download_artifacts(
            f"models:/{model.model_id}", dst_path=str(downloads / model.model_id)
        )
    registered = client.get_registered_model(MODEL)
    haystacks["registered model"] = json.dumps(
        {"tags": registered.tags, "description": registered.description}
    ).encode()
    files = [p for p in downloads.rglob("*") if p.is_file()]
    assert any(p.name == "model.onnx" for p in files)
    for path in files:
        haystacks[f"artifact:{path.relative_to(downloads)}"] = path.read_bytes()
    for name, secret in PLANTED.items():
        leaks = [where for where, data in haystacks.items() if secret.encode() in data]
        assert not leaks, f"{name} leaked into {leaks}"
    # Secrets in the trial config (nested in lists, in URLs): Tune's own files in the
    # experiment directory hold the config, so only our journal is read there; the server's
    # database and logs are read whole.
    ours = {k: v for k, v in haystacks.items() if not k.startswith("experiment:")}
    ours["journal"] = (outage["experiment"] / JOURNAL_FILE).read_bytes()
    for path in [root / "mlflow.db", *root.glob("server-*.log")]:
        ours[f"server:{path.name}"] = path.read_bytes()
    for name, secret in tune_job.CONFIG_SECRETS.items():
        leaks = [where for where, data in ours.items() if secret.encode() in data]
        assert not leaks, f"the config's {name} leaked into {leaks}"
    params = runs[0].data.params
    assert params["learner_config_dict/my_creds"] == "***"
    assert params["learner_config_dict/db_url"] == "postgresql://rl:***@db.internal/rl"
    assert "'name': 'db'" in params["learner_config_dict/services"]


def test_secret_looking_config_keys_are_redacted():
    from rllib_mlflow.mlflow.runs import redact_params

    config = {
        "db_password": "p1",
        "passwd": "p2",
        "client_secret": "p3",
        "api_key": "p4",
        "wandb": {"api-key": "p5", "project": "rl"},
        "ssh_private_key": "p6",
        "aws": {"credentials": "p7"},
        "hf_token": "p8",
        "basic_auth": "p9",
        "lr": 0.001,
    }
    params = redact_params(config)
    assert params["wandb/project"] == "rl" and params["lr"] == "0.001"
    leaked = {k: v for k, v in params.items() if v.startswith("p") and v[1:].isdigit()}
    assert not leaked, leaked


# -- 2. the driver killed with SIGKILL while exports are queued --------------------------


def test_sigkill_of_the_driver_then_sync_registers_every_checkpoint_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = tmp_path / "results" / tune_job.EXPERIMENT
    journal = experiment / JOURNAL_FILE
    process = _start_job(_job_command(tmp_path / "results", uri, 12), tmp_path / "job.log")
    try:
        _wait_for(lambda: _events(journal, "queued") >= 4, 240, "4 checkpoints", process)
        workers = _workers_of(process.pid)
        assert len(workers) == 1
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        _kill_group(process)
    # The orphaned worker finishes the task in hand at most, then stops by itself.
    _wait_for(lambda: not _alive(workers[0]), 120, "the orphaned worker to stop")
    registered_before_sync = _keys(_versions(uri)) if Path(f"{tmp_path}/mlflow.db").exists() else []
    expected = _persisted(experiment)
    assert len(expected) >= 4
    assert set(registered_before_sync) < expected  # the kill left work for sync
    staged = experiment / STAGING_DIR
    assert list(staged.rglob("checkpoint_*")), "the kill left staged copies"
    sync = _sync(experiment, uri)
    assert sync.returncode == 0, sync.stdout[-2000:] + sync.stderr[-3000:]
    _assert_exactly_once(uri, expected)
    assert not staged.exists(), list(staged.rglob("*"))  # sync removed what it registered
    time.sleep(2)  # nothing registers behind sync's back
    _assert_exactly_once(uri, expected)


# -- 3. Ctrl-C twice while the experiment end waits for registrations --------------------


def test_sigint_during_the_flush_exits_promptly_and_sync_finishes(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = tmp_path / "results" / tune_job.EXPERIMENT
    journal = experiment / JOURNAL_FILE
    log = tmp_path / "job.log"
    # Full verification of all three formats is slow enough to leave a backlog at the end.
    command = _job_command(
        tmp_path / "results",
        uri,
        6,
        callback_kwargs={"formats": ["saved_model", "h5", "onnx"]},
    )
    process = _start_job(command, log)
    try:
        _wait_for(lambda: "checkpoint(s)..." in log.read_text(), 300, "the flush", process)
        pending_at_flush = _events(journal, "queued") - _events(journal, "registered")
        process.send_signal(signal.SIGINT)
        time.sleep(1.0)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        interrupted_at = time.monotonic()
        process.wait(timeout=60)
        exit_s = time.monotonic() - interrupted_at
    finally:
        _kill_group(process)
    output = log.read_text(errors="replace")
    assert exit_s < 30, output[-3000:]
    assert pending_at_flush >= 1
    from rllib_mlflow.tune.journal import Journal

    left = Journal(experiment).pending()
    assert left, "everything was registered before the interrupt: nothing tested"
    assert "not registered yet; the journal keeps them" in output, output[-3000:]
    assert f"rllib-mlflow sync {experiment}" in output
    expected = _persisted(experiment)
    assert len(expected) == 6
    sync = _sync(experiment, uri)
    assert sync.returncode == 0, sync.stdout[-2000:] + sync.stderr[-3000:]
    versions = _assert_exactly_once(uri, expected)
    assert sorted(int(v.version) for v in versions) == list(range(1, 7))
    assert not Journal(experiment).pending()


# -- 4. export workers killed mid-export, and no space left for export files -------------


def _exporting(scratch: Path) -> int | None:
    """The PID of a live process with an export scratch directory in `scratch`."""
    for directory in scratch.glob(f"{EXPORT_PREFIX}*"):
        owner = int(directory.name.removeprefix(EXPORT_PREFIX).split("_", 1)[0])
        if _alive(owner):
            return owner
    return None


def _kill_mid_export(scratch: Path, process: subprocess.Popen, tries: int = 5) -> int:
    """SIGKILL an export worker while its export is under way (its scratch directory is
    left behind); returns its PID. An export that ends between seeing and killing is missed:
    the next one is tried."""
    for _ in range(tries):
        _wait_for(lambda: _exporting(scratch), 300, "an export under way", process)
        worker = _exporting(scratch)
        if worker is None:
            continue
        os.kill(worker, signal.SIGKILL)
        _wait_for(lambda w=worker: not _alive(w), 30, "the killed worker to go")
        if list(scratch.glob(f"{EXPORT_PREFIX}{worker}_*")):
            return worker
    raise AssertionError(f"no export was caught under way in {tries} tries")


def _fill(directory: Path) -> None:
    """Write a file until the disk is full. A disk the killed workers' scratch directories
    already filled (a CI run) is left as it is: even the filler's name finds no room."""
    try:
        with open(directory / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * (1 << 20))
                filler.flush()
    except OSError as error:
        assert error.errno == errno.ENOSPC, error


def test_killed_workers_and_a_full_disk_then_sync_leave_nothing_behind(tmp_path):
    """The job's export scratch (RLLIB_MLFLOW_TMPDIR) is a 64 MiB tmpfs in a mount
    namespace of its own. Two export workers are SIGKILLed mid-export (each leaves its
    scratch directory), then the disk is filled from outside (through /proc/PID/root): the
    checkpoints left fail in one line naming RLLIB_MLFLOW_TMPDIR, and training goes on. The
    kills lose nothing: the job registers every checkpoint the full disk did not fail (a new
    worker is started and what the dead one never answered is resent). In the same
    namespace, the filler removed, `rllib-mlflow sync` registers the rest. Every checkpoint
    once, no traceback, no staged copy and no export directory left (issue 37)."""
    if shutil.which("unshare") is None:
        pytest.fail("needs unshare(1) to mount a tmpfs in a user namespace")
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs {tmp_path}"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs in a user namespace: {probe.stderr[-300:]!r}")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = tmp_path / "results" / tune_job.EXPERIMENT
    journal = experiment / JOURNAL_FILE
    full = tmp_path / "scratch"
    full.mkdir()
    job = _job_command(tmp_path / "results", uri, 8, seconds_per_iteration=2)
    sync = [os.path.join(VENV_BIN, "rllib-mlflow"), "sync", str(experiment), "--tracking-uri", uri]
    script = (
        f'mount -t tmpfs -o size=64m tmpfs "{full}" || exit 97; '
        f'"$@"; echo $? > "{tmp_path}/job.rc"; rm -f "{full}/filler"; '
        f'cp "{tmp_path}/mlflow.db" "{tmp_path}/before-sync.db"; '
        f'{shlex.join(sync)} > "{tmp_path}/sync.log" 2>&1; echo $? > "{tmp_path}/sync.rc"; '
        f'ls -A "{full}" > "{tmp_path}/left.txt"'
    )
    command = ["unshare", "-rm", "sh", "-c", script, "sh", *job]
    log = tmp_path / "job.log"
    # Only our export files go there: a full TMPDIR would stop Ray's own checkpointing too.
    process = _start_job(command, log, _env(RLLIB_MLFLOW_TMPDIR=str(full)))
    scratch = Path(f"/proc/{process.pid}/root{full}")  # the tmpfs, seen from outside
    try:
        killed = [_kill_mid_export(scratch, process) for _ in range(2)]
        _fill(scratch)
        assert process.wait(timeout=600) == 0, log.read_text(errors="replace")[-4000:]
    finally:
        _kill_group(process)
    output = log.read_text(errors="replace")
    assert (tmp_path / "job.rc").read_text().strip() == "0", output[-4000:]
    assert "rllib-mlflow-test: job done" in output
    # Each kill told in one line, no crash dump; a full disk one line, h5py's dump nowhere.
    died = re.findall(r"export worker 1 died \(SIGKILL\); (?:restarted|a new one)", output)
    assert len(died) == len(killed), output[-4000:]
    assert "Traceback" not in output and "BrokenPipeError" not in output, output[-4000:]
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    failed = [e for e in entries if e["event"] == "failed"]
    assert failed, "the full disk failed no export: nothing tested"
    assert all("No space left on device" in e["error"] for e in failed), failed
    assert all("RLLIB_MLFLOW_TMPDIR" in e["error"] for e in failed), failed
    assert all("\n" not in e["error"] and "buf = 0x" not in e["error"] for e in failed), failed
    assert "could not register" in output and "rllib-mlflow sync" in output
    sync_log = (tmp_path / "sync.log").read_text(errors="replace")
    assert (tmp_path / "sync.rc").read_text().strip() == "0", sync_log[-3000:]
    expected = _persisted(experiment)
    assert len(expected) == 8
    by_the_job = set(_keys(_versions(f"sqlite:///{tmp_path}/before-sync.db")))
    full_disk = {(trial, int(i)) for trial, i in (e["key"].rsplit("/", 1) for e in failed)}
    assert by_the_job | full_disk == expected, (by_the_job, failed)
    _assert_exactly_once(uri, expected)
    client = _client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(tune_job.EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "training_iteration")}
    assert steps == set(range(1, 9))
    assert not (experiment / STAGING_DIR).exists(), list((experiment / STAGING_DIR).rglob("*"))
    assert (tmp_path / "left.txt").read_text().split() == []  # no export directory


# -- 5. four trials, one registered model ------------------------------------------------


@pytest.fixture(scope="module")
def four_trials(tmp_path_factory):
    root = tmp_path_factory.mktemp("four_trials")
    uri = f"sqlite:///{root}/mlflow.db"
    command = _job_command(root / "results", uri, 2, learning_rates=[1e-2, 3e-3, 1e-3, 3e-4])
    process = _start_job(command, root / "job.log")
    returncode = _finish(process, timeout=400)
    output = (root / "job.log").read_text(errors="replace")
    assert returncode == 0, output[-4000:]
    return uri, root / "results" / tune_job.EXPERIMENT, root


def test_four_trials_get_gapless_versions_one_per_trial_and_iteration(four_trials):
    uri, experiment, _ = four_trials
    expected = _persisted(experiment)
    assert len({trial for trial, _ in expected}) == 4 and len(expected) == 8
    versions = _assert_exactly_once(uri, expected)
    assert sorted(int(v.version) for v in versions) == list(range(1, 9))
    by_run = collections.Counter(v.run_id for v in versions)
    assert sorted(by_run.values()) == [2, 2, 2, 2]  # each trial's versions in its own run


def test_best_alias_points_at_the_true_best_of_all_trials(four_trials):
    uri, _, _ = four_trials
    versions = _versions(uri)
    values = {v.version: float(v.tags["metric.episode_return_mean"]) for v in versions}
    best = _client(uri).get_model_version_by_alias(MODEL, "best")
    assert values[best.version] == max(values.values()), values


def test_served_version_loads_no_pickle_and_answers_4xx_to_bad_requests(four_trials):
    uri, _, root = four_trials
    import mlflow

    mlflow.set_tracking_uri(uri)
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@best"))
    files = [p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()]
    assert "model.onnx" in {Path(f).name for f in files}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".joblib", ".cloudpickle"))]
    log = root / "serve.log"
    env = subprocess_env(MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false")
    server = start_model_server(f"models:/{MODEL}@best", uri, log, env=env)
    try:
        status, body = post_json(f"{server.uri}/invocations", {"inputs": [[0.0, 0.1, 0.0, -0.1]]})
        assert status == 200, body
        assert body["predictions"] in ([0], [1])
        status, body = post_json(f"{server.uri}/invocations", {"inputs": [[0.0, 0.1]]})
        assert status == 400 and "expected shape" in body["message"], body
    finally:
        server.stop()
    assert "pickle" not in log.read_text(errors="replace").lower()


# -- 6. the object store killed in the middle of training, restarted on the same ports --

# At most: the trial stops 3 iterations after the store is back (tune_job.StopAfterSignal).
OBJECT_STORE_ITERATIONS = 60


@pytest.fixture(scope="module")
def object_store_outage(tmp_path_factory):
    """A production stack of its own (PostgreSQL, SeaweedFS, `mlflow server` proxying the
    artifacts to the bucket), so that the session's stack never sees an outage. One trial
    of iterations of 4 s, checkpoints on local disk. SeaweedFS gets SIGKILL after the
    first registration and is started again 10 s later on the same ports and data; its
    Raft master takes another 15-20 s (more on a loaded machine) to elect itself and serve
    S3 again. The trial trains 3 iterations past that moment, then stops."""
    root = tmp_path_factory.mktemp("object_store_outage")
    experiment = root / "results" / tune_job.EXPERIMENT
    journal = experiment / JOURNAL_FILE
    with running_stack(root / "stack") as stack:
        command = _job_command(
            root / "results",
            stack.tracking_uri,
            OBJECT_STORE_ITERATIONS,
            seconds_per_iteration=4.0,
            stop_file=str(root / "store-is-back"),
        )
        log = root / "job.log"
        process = _start_job(command, log)
        try:
            _wait_for(lambda: _events(journal, "registered") >= 1, 240, "a registration", process)
            stack.kill_object_store()
            down_at = time.time()
            time.sleep(10)
            assert process.poll() is None, "the job ended during the outage"
            stack.restart_object_store()  # returns once the bucket answers again
            up_at = time.time()
            (root / "store-is-back").touch()
            returncode = _finish(process, timeout=400)
        finally:
            if process.poll() is None:
                _kill_group(process)
        yield {
            "stack": stack,
            "experiment": experiment,
            "journal": [json.loads(line) for line in journal.read_text().splitlines()],
            "returncode": returncode,
            "output": log.read_text(errors="replace"),
            "after_job": _keys(_versions(stack.tracking_uri)),
            "down_at": down_at,
            "up_at": up_at,
        }


def test_object_store_outage_neither_fails_nor_stalls_training(object_store_outage):
    outage = object_store_outage
    assert outage["returncode"] == 0, outage["output"][-4000:]
    assert "rllib-mlflow-test: job done" in outage["output"]
    down_at, up_at = outage["down_at"], outage["up_at"]
    assert up_at - down_at >= 20
    (result,) = outage["experiment"].glob("*/result.json")
    stamps = [json.loads(line)["timestamp"] for line in result.read_text().splitlines()]
    assert len(stamps) < OBJECT_STORE_ITERATIONS
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert max(gaps) < 15, gaps
    # Iterations went on at their pace while the store was down, and after it came back.
    assert len([s for s in stamps if down_at <= s <= up_at]) >= 4, (stamps, down_at, up_at)
    assert len([s for s in stamps if s > up_at]) >= 2, (stamps, up_at)


def test_object_store_outage_held_up_registrations_without_losing_any(object_store_outage):
    outage = object_store_outage
    queued = {e["key"]: e["time"] for e in outage["journal"] if e["event"] == "queued"}
    registered = [e for e in outage["journal"] if e["event"] == "registered"]
    # The outage really stood in the way: checkpoints queued before the store came back
    # were registered only after it did.
    assert [e for e in registered if queued[e["key"]] < outage["up_at"] < e["time"]]
    assert not [e for e in outage["journal"] if e["event"] == "failed"], outage["journal"]
    expected = _persisted(outage["experiment"])
    (result,) = outage["experiment"].glob("*/result.json")
    assert len(expected) == len(result.read_text().splitlines())
    # The job itself registers every checkpoint once, and nothing twice.
    after_job = outage["after_job"]
    assert len(after_job) == len(set(after_job)), collections.Counter(after_job)
    assert set(after_job) == expected, outage["output"][-4000:]
    assert sorted(e["key"] for e in registered) == sorted(queued)
    versions = _assert_exactly_once(outage["stack"].tracking_uri, expected)
    assert sorted(int(v.version) for v in versions) == list(range(1, len(expected) + 1))


def test_object_store_outage_every_version_is_complete_in_the_bucket(object_store_outage, tmp_path):
    """Each version's model files are objects in the bucket, and what boto3 downloads from
    there loads as an MLflow model that computes actions."""
    import mlflow.pyfunc
    import numpy as np

    stack = object_store_outage["stack"]
    client = _client(stack.tracking_uri)
    s3 = stack.s3_client()
    observations = np.random.default_rng(0).uniform(-0.05, 0.05, (4, 4)).astype(np.float32)
    versions = _versions(stack.tracking_uri)
    model_ids = {v.version: v.model_id or v.source.removeprefix("models:/") for v in versions}
    # No half-uploaded model left behind in the Models tab: one READY model per version.
    experiment_id = client.get_experiment_by_name(tune_job.EXPERIMENT).experiment_id
    models = client.search_logged_models([experiment_id], max_results=1000)
    assert sorted(m.model_id for m in models) == sorted(model_ids.values())
    assert {m.status.name for m in models} == {"READY"}, [(m.model_id, m.status) for m in models]
    for version in versions:
        location = client.get_logged_model(model_ids[version.version]).artifact_location
        assert location.startswith("mlflow-artifacts:/"), location
        prefix = location.removeprefix("mlflow-artifacts:/").strip("/") + "/"
        keys = stack.object_keys(prefix)
        files = {key.removeprefix(prefix) for key in keys}
        assert {"MLmodel", "data/model.onnx", "data/policy.json"} <= files, (version, files)
        local = tmp_path / f"v{version.version}"
        for key in keys:
            target = local / key.removeprefix(prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(stack.bucket, key, str(target))
        policy = json.loads((local / "data" / "policy.json").read_text())
        assert policy["training_iteration"] == int(version.tags["training_iteration"])
        actions = mlflow.pyfunc.load_model(str(local)).predict(observations)
        assert np.asarray(actions).shape == (4,) and set(np.unique(actions)) <= {0, 1}
