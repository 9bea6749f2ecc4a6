"""Attacks on our own promises, with real processes: a hostile tracking server, two syncs and
a running callback registering into one model, two "hosts" racing, a corrupted or read-only
journal, secrets in nested configs, permanent faults that must not be retried.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rllib_mlflow.errors import RegistryError
from rllib_mlflow.mlflow.versions import find_version, logged_model_id
from tests import tune_job
from tests.mlflow_server import VENV_BIN, free_port, start_process, start_tracking_server
from tests.test_reliability import (
    _client,
    _env,
    _finish,
    _job_command,
    _kill_group,
    _persisted,
    _start_job,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = tune_job.MODEL_NAME

# -- 1. a hostile tracking server ------------------------------------------------------------

LOAD = """
import json, sys
import rllib_mlflow
try:
    rllib_mlflow.load_policy("models:/adv@best", tracking_uri=sys.argv[1])
except Exception as error:
    mro = [c.__name__ for c in type(error).__mro__]
    print(json.dumps({"error": type(error).__name__, "mro": mro, "message": str(error)}))
else:
    print(json.dumps({"error": None}))
"""


def _load_from_hostile_server(
    tmp_path: Path, mode: str, *server_args: str, **env: str
) -> tuple[dict, float]:
    """Run `load_policy` in a fresh process against a hostile server in `mode`; its temp
    folder is tmp_path/tmp and a victim folder with one file is tmp_path/victim."""
    (tmp_path / "tmp").mkdir()
    victim = tmp_path / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "keep.txt").write_text("untouched")
    port = free_port()
    if mode.startswith("s3-"):  # this server is the S3 endpoint too
        env = {
            "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "hostile",
            "AWS_SECRET_ACCESS_KEY": "hostile",
            "AWS_DEFAULT_REGION": "us-east-1",
            **env,
        }
    server = start_process(
        [sys.executable, "-m", "tests.hostile_server", str(port), mode, str(victim), *server_args],
        f"http://127.0.0.1:{port}",
        "/api/2.0/mlflow/model-versions/get",
        tmp_path / "server.log",
    )
    try:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", LOAD, server.uri],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=_env(TMPDIR=str(tmp_path / "tmp"), **env),
        )
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), elapsed


def _assert_nothing_written_outside(tmp_path: Path, *planted: str) -> None:
    victim = tmp_path / "victim"
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert (victim / "keep.txt").read_text() == "untouched"
    assert list((tmp_path / "tmp").iterdir()) == []  # and the load cleaned up after itself
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["server.log", "tmp", "victim", *planted]
    )


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("data-relative", "../escaped"),
        ("data-absolute", "victim"),
        ("listing-dotdot", "'..'"),
    ],
)
def test_hostile_paths_are_refused_and_nothing_is_written_outside(tmp_path, mode, expected):
    answer, _ = _load_from_hostile_server(tmp_path, mode)
    assert answer["error"] == "UnsafePathError", answer
    assert "RLlibMLflowError" in answer["mro"]
    assert expected in answer["message"] and "Refusing" in answer["message"], answer
    _assert_nothing_written_outside(tmp_path)


def _plant_store(tmp_path: Path, layout: str) -> str:
    """An artifact store at tmp_path/store holding a model folder laid out to escape; the
    artifact location a hostile server reports for it."""
    store, victim = tmp_path / "store", tmp_path / "victim"
    model = store / "1" / "models" / "m-1" / "artifacts"
    model.mkdir(parents=True)
    victim.mkdir()
    data = {"data-absolute": str(victim), "data-relative": "../../../../../victim"}
    (model / "MLmodel").write_text(
        f"flavors:\n  rllib_mlflow:\n    data: {data.get(layout, 'data')}\n"
    )
    if layout == "oversized":
        (model / "data").mkdir()
        (model / "data" / "policy.json").write_text('{"formats": ["onnx"]}')
        (model / "data" / "model.onnx").write_bytes(b"\0" * 2_000_000)
    if layout == "symlink-folder":  # the data folder is the victim's
        (model / "data").symlink_to(victim, target_is_directory=True)
    if layout == "symlink-file":  # policy.json is a file of the victim's
        (model / "data").mkdir()
        (model / "data" / "policy.json").symlink_to(victim / "keep.txt")
    return {
        "relative": "../../etc",
        "climbing": f"{model}/../../../../../victim",
        "file-uri-climbing": f"file://{model}/../../../../../victim",
    }.get(layout, str(model))


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("relative", "no absolute path"),
        ("climbing", "climbs with '..'"),
        ("file-uri-climbing", "climbs with '..'"),
        ("data-absolute", "victim"),
        ("data-relative", "../victim"),
        ("symlink-folder", "through a symlink"),
        ("symlink-file", "through a symlink"),
    ],
)
def test_an_artifact_store_location_that_escapes_is_refused(tmp_path, layout, expected):
    """A server that does not proxy its artifacts names where the client reads them: a
    location, or a model folder in it, leading anywhere else is refused before any read."""
    answer, _ = _load_from_hostile_server(tmp_path, "store", _plant_store(tmp_path, layout))
    assert answer["error"] == "UnsafePathError", answer
    assert expected in answer["message"] and "Refusing" in answer["message"], answer
    _assert_nothing_written_outside(tmp_path, "store")


def test_a_trickling_server_fails_within_the_load_deadline(tmp_path):
    answer, elapsed = _load_from_hostile_server(
        tmp_path, "trickle", MLFLOW_HTTP_REQUEST_TIMEOUT="4"
    )
    assert answer["error"] == "TrackingError", answer
    assert "within 4 s" in answer["message"] and "MLFLOW_HTTP_REQUEST_TIMEOUT" in answer["message"]
    assert elapsed < 30, elapsed  # the body would take hours
    _assert_nothing_written_outside(tmp_path)


def test_an_s3_store_that_trickles_fails_within_the_load_deadline(tmp_path):
    answer, elapsed = _load_from_hostile_server(
        tmp_path, "s3-trickle", MLFLOW_HTTP_REQUEST_TIMEOUT="4"
    )
    assert answer["error"] == "TrackingError", answer
    assert "s3://bucket/model" in answer["message"], answer
    assert "within 4 s" in answer["message"] and "MLFLOW_HTTP_REQUEST_TIMEOUT" in answer["message"]
    assert elapsed < 30, elapsed  # the body would take hours
    _assert_nothing_written_outside(tmp_path)


@pytest.mark.parametrize(
    "mode", ["oversized", "oversized-declared", "s3-oversized", "s3-oversized-declared", "store"]
)
def test_an_oversized_file_is_refused(tmp_path, mode):
    """Through the proxy, from an S3 store and from a local one."""
    limit = {"RLLIB_MLFLOW_MAX_FILE_BYTES": "1000000"} if "declared" not in mode else {}
    planted = (_plant_store(tmp_path, "oversized"),) if mode == "store" else ()
    answer, _ = _load_from_hostile_server(tmp_path, mode, *planted, **limit)
    assert answer["error"] == "TrackingError", answer
    assert "model.onnx" in answer["message"] and "RLLIB_MLFLOW_MAX_FILE_BYTES" in answer["message"]
    _assert_nothing_written_outside(tmp_path, *(["store"] if planted else []))


@pytest.mark.parametrize("mode", ["policy-list", "policy-types"])
def test_a_malformed_policy_json_is_a_clear_error(tmp_path, mode):
    answer, _ = _load_from_hostile_server(tmp_path, mode)
    assert answer["error"] == "RegistryError", answer
    assert "policy" in answer["message"] and "Re-register" in answer["message"], answer
    _assert_nothing_written_outside(tmp_path)


# -- 2. names, tags and retries ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "a/../b", "bad\nname", "tab\there", "x" * 300])
def test_names_mlflow_would_refuse_are_refused_before_any_work(name):
    from rllib_mlflow import MLflowCheckpointCallback, log_checkpoint

    with pytest.raises(RegistryError, match="Invalid registered model name"):
        MLflowCheckpointCallback(name)
    with pytest.raises(RegistryError, match="Invalid registered model name"):
        log_checkpoint("/no/such/checkpoint", name, tracking_uri="sqlite:////nonexistent/x.db")


def test_an_oversized_or_malformed_tag_is_refused_before_the_export(trained_checkpoint, tmp_path):
    """Nothing is exported, logged or created: not even the registered model."""
    from mlflow import MlflowClient

    from rllib_mlflow import log_checkpoint

    checkpoint = trained_checkpoint("ppo_cartpole")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for tags, problem in [
        ({"notes": "x" * 1_000_000}, "1,000,000 characters"),
        ({"a\nb": "1"}, "may only hold"),
        ({"..": "1"}, "may only hold"),
    ]:
        with pytest.raises(RegistryError, match=problem):
            log_checkpoint(checkpoint.path, "tagged", tags=tags, tracking_uri=uri)
    client = MlflowClient(uri, registry_uri=uri)
    assert client.search_registered_models() == []
    assert client.search_logged_models(experiment_ids=["0"]) == []


def test_transient_faults_are_retried_and_permanent_ones_fail_at_once():
    import errno

    from mlflow.exceptions import MlflowException, RestException

    from rllib_mlflow.errors import TrackingError
    from rllib_mlflow.retries import is_transient, with_retries

    transient = [
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        TimeoutError("timed out"),
        MlflowException("API request failed with exception HTTPConnectionPool"),  # 500
        RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}),
        TrackingError("Cannot reach the MLflow tracking server"),
    ]
    permanent = [
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.ENOSPC, "No space left on device"),
        KeyError("run_id"),
        RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}),
        RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "missing"}),
        RestException({"error_code": "PERMISSION_DENIED", "message": "no"}),
        TrackingError("refused", status=403),
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in permanent] == [False] * len(permanent)

    calls = []

    def fail_with(error):
        calls.append(error)
        raise error

    started = time.monotonic()
    with pytest.raises(PermissionError):
        with_retries(lambda: fail_with(PermissionError(errno.EACCES, "denied")), first_delay=5)
    assert len(calls) == 1 and time.monotonic() - started < 1
    calls.clear()
    with pytest.raises(ConnectionRefusedError):
        with_retries(lambda: fail_with(ConnectionRefusedError()), attempts=3, first_delay=0.01)
    assert len(calls) == 3


def test_a_permanent_registration_failure_fails_at_once_not_after_a_minute(
    trained_checkpoint, tmp_path
):
    """An unwritable export folder used to be retried for about a minute per checkpoint."""
    from rllib_mlflow.register.registration import register_task
    from rllib_mlflow.register.task import RegistrationSettings, RegistrationTask

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    checkpoint = trained_checkpoint("ppo_cartpole")
    task = RegistrationTask(
        settings=RegistrationSettings(
            registered_model_name="permanent", formats=("onnx",), verify=False
        ),
        checkpoint=checkpoint.path,
        checkpoint_uri=checkpoint.path,
        training_iteration=1,
        trial_id="t1",
        trial_name="t1",
    )
    os.environ["RLLIB_MLFLOW_TMPDIR"] = str(not_a_folder)
    started = time.monotonic()
    try:
        with pytest.raises(NotADirectoryError):
            register_task(task, f"sqlite:///{tmp_path}/mlflow.db")
    finally:
        del os.environ["RLLIB_MLFLOW_TMPDIR"]
    assert time.monotonic() - started < 30  # not 2 + 4 + 8 + 16 + 32 s of retries


def test_a_version_registered_before_its_result_gets_its_metrics_and_best_later(
    trained_checkpoint, tmp_path
):
    """A sync beside a live run may register a checkpoint before Tune has reported its result;
    its version then has only what the checkpoint holds (no custom metric, nor an old-stack
    checkpoint's returns). The callback's registration of the same checkpoint finds the
    version, adds the metric tags it lacks and moves ``best`` to it, creating nothing."""
    from mlflow import MlflowClient

    from rllib_mlflow.register.registration import register_task
    from rllib_mlflow.register.task import RegistrationSettings, RegistrationTask

    checkpoint = trained_checkpoint("ppo_cartpole")
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def task(metrics: dict[str, float]) -> RegistrationTask:
        return RegistrationTask(
            settings=RegistrationSettings(
                registered_model_name="late-metrics",
                best_metric="custom_score",
                formats=("onnx",),
                verify=False,
            ),
            checkpoint=checkpoint.path,
            checkpoint_uri=checkpoint.path,
            training_iteration=3,
            trial_id="t1",
            trial_name="t1",
            metrics=metrics,
        )

    client = MlflowClient(uri)
    [synced] = register_task(task({}), uri)
    before = client.get_model_version(**synced).tags
    assert "metric.custom_score" not in before
    assert "best" not in client.get_registered_model("late-metrics").aliases
    reported = {"custom_score": 0.75, "env_runners/episode_return_mean": -1.0}
    assert register_task(task(reported), uri) == [synced]
    versions = client.search_model_versions("name = 'late-metrics'")
    assert [str(v.version) for v in versions] == [synced["version"]]
    assert versions[0].tags["metric.custom_score"] == "0.75"
    # A tag the version had is kept: the checkpoint's own value, not overwritten.
    assert versions[0].tags["episode_return_mean"] == before["episode_return_mean"]
    assert (
        str(client.get_model_version_by_alias("late-metrics", "best").version) == synced["version"]
    )


# -- 3. secrets --------------------------------------------------------------------------------


def test_secrets_are_masked_at_any_depth_and_in_urls():
    import logging

    from rllib_mlflow.redaction import RedactingFilter, flat_params, redact

    config = {
        "services": [{"name": "db", "api_key": "S1"}, {"nested": [{"password": "S2"}]}],
        "my_creds": "S3",
        "dsn": "S4",
        "database": {"url": "postgresql://user:S5@db.internal/rl"},
        "sessionCookie": "S6",
        "aws": {"secretAccessKey": "S7"},
        "connection_string": "S8",
        "hooks": ["https://S9@hooks.example/x"],
        "lr": 0.001,
        "env_config": {"size": 4},
    }
    params = flat_params(config)
    text = json.dumps(params) + json.dumps(redact(config))
    leaked = [s for s in ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9") if s in text]
    assert not leaked, params
    assert params["lr"] == "0.001" and params["env_config/size"] == "4"
    assert params["database/url"] == "postgresql://user:***@db.internal/rl"
    assert "'name': 'db'" in params["services"]  # the rest of a list survives

    record = logging.LogRecord("x", logging.INFO, "", 0, "at %s", ("mysql://u:S10@h/db",), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "at mysql://u:***@h/db"


# -- 4. the journal ----------------------------------------------------------------------------

JOB_WITHOUT_CALLBACK = """
import json, sys
import ray
from tests import tune_job
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
tune_job.run(**json.loads(sys.argv[1]), with_callback=False)
ray.shutdown()
"""


@pytest.fixture(scope="module")
def unregistered_experiment(tmp_path_factory) -> Path:
    """Two trials of 3 iterations, trained without our callback: nothing is registered."""
    root = tmp_path_factory.mktemp("unregistered")
    command = _job_command(root / "results", "sqlite:///unused.db", 3, learning_rates=[1e-3, 3e-4])
    command[2] = JOB_WITHOUT_CALLBACK
    process = _start_job(command, root / "job.log")
    returncode = _finish(process, timeout=300)
    assert returncode == 0, (root / "job.log").read_text(errors="replace")[-4000:]
    experiment = root / "results" / tune_job.EXPERIMENT
    assert len(_persisted(experiment)) == 6
    return experiment


def _copy_experiment(experiment: Path, target: Path) -> Path:
    shutil.copytree(experiment, target, ignore=shutil.ignore_patterns("*.lock"))
    return target


def _sync(experiment: Path, uri: str, *extra: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [os.path.join(VENV_BIN, "rllib-mlflow"), "sync", str(experiment), "--tracking-uri", uri]
        + list(extra),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=_env(**env),
    )


@pytest.mark.slow
def test_journal_lines_that_are_not_entries_are_reported_and_skipped(
    unregistered_experiment, tmp_path
):
    experiment = _copy_experiment(unregistered_experiment, tmp_path / "exp")
    trial = sorted(experiment.glob("*/checkpoint_000000"))[0]
    valid = {
        "event": "queued",
        "key": "x/1",
        "checkpoint": str(trial),
        "checkpoint_uri": str(trial),
        "training_iteration": 1,
        "registered_model_name": "journaled",
        "trial_id": "journaled-trial",
    }
    lines = [
        "42",
        '{"event": "queued"}',
        '{"event": "queued", "key": "k", "checkpoint": 7',  # cut short
        "\x00garbage",
        json.dumps(valid),
    ]
    (experiment / "rllib_mlflow_journal.jsonl").write_text("\n".join(lines) + "\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = _sync(experiment, uri, "--name", MODEL, "--formats", "onnx")
    assert done.returncode == 0, done.stderr[-3000:]
    for number in (1, 2, 3, 4):
        assert f"line {number} skipped" in done.stderr, done.stderr[-3000:]
    # The valid entry and every checkpoint on disk: each registered once.
    keys = [(v.tags["trial_id"], v.tags["training_iteration"]) for v in _versions_of(uri, MODEL)]
    assert len(keys) == len(set(keys)) == 7, keys  # 6 on disk + the journaled one


def _versions_of(uri: str, name: str) -> list:
    return _client(uri).search_model_versions(f"name = '{name}'", max_results=1000)


@pytest.mark.slow
def test_a_read_only_journal_is_refused_before_any_work(unregistered_experiment, tmp_path):
    if shutil.which("unshare") is None:
        pytest.fail("needs unshare(1) for a read-only bind mount in a user namespace")
    experiment = _copy_experiment(unregistered_experiment, tmp_path / "exp")
    (experiment / "rllib_mlflow_journal.jsonl").write_text("")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rllib_mlflow = os.path.join(VENV_BIN, "rllib-mlflow")
    # Root writes through file modes, so make the experiment a read-only mount instead.
    script = (
        f'mount --bind "{experiment}" "{experiment}" && '
        f'mount -o remount,bind,ro "{experiment}" && exec "$@"'
    )
    command = [rllib_mlflow, "sync", str(experiment), "--tracking-uri", uri, "--name", MODEL]
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", *command],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=_env(),
    )
    assert done.returncode != 0
    assert "Cannot write the journal" in done.stderr and "Nothing was registered" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not Path(f"{tmp_path}/mlflow.db").exists() or not _versions_of(uri, MODEL)


@pytest.mark.slow
def test_sync_of_a_missing_folder_fails_with_one_line(tmp_path):
    done = _sync(tmp_path / "does-not-exist", f"sqlite:///{tmp_path}/mlflow.db", "--name", MODEL)
    assert done.returncode != 0
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow
def test_trials_without_an_id_in_result_json_get_their_own_versions(
    unregistered_experiment, tmp_path
):
    experiment = _copy_experiment(unregistered_experiment, tmp_path / "exp")
    for result in experiment.glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines()]
        result.write_text("".join(json.dumps({**r, "trial_id": ""}) + "\n" for r in lines))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = _sync(experiment, uri, "--name", "no-ids", "--formats", "onnx")
    assert done.returncode == 0, done.stderr[-3000:]
    versions = _versions_of(uri, "no-ids")
    keys = [(v.tags["trial_id"], v.tags["training_iteration"]) for v in versions]
    assert len(keys) == len(set(keys)) == 6, keys
    assert len({trial for trial, _ in keys}) == 2 and all(t.startswith("dir-") for t, _ in keys)
    journal = [json.loads(line) for line in (experiment / "rllib_mlflow_journal.jsonl").open()]
    assert len({e["key"] for e in journal if e["event"] == "registered"}) == 6


# -- 5. exactly one version per key, whoever registers it ---------------------------------------


def _assert_one_version_per_key_and_right_aliases(uri: str, name: str, expected: set) -> None:
    client = _client(uri)
    versions = _versions_of(uri, name)
    keys = [(v.tags["trial_id"], int(v.tags["training_iteration"])) for v in versions]
    assert len(keys) == len(set(keys)), collections.Counter(keys).most_common(3)
    assert set(keys) == expected
    values = {v.version: float(v.tags["metric.episode_return_mean"]) for v in versions}
    best = client.get_model_version_by_alias(name, "best")
    assert values[best.version] == max(values.values()), (best.version, values)
    for _, iteration in expected:
        aliased = find_version(f"models:/{name}@iter-{iteration}", tracking_uri=uri)
        assert aliased.tags["training_iteration"] == str(iteration)
    logged = client.search_logged_models(
        experiment_ids=[e.experiment_id for e in client.search_experiments()]
    )
    assert sorted(m.model_id for m in logged) == sorted(logged_model_id(v) for v in versions)


@pytest.mark.slow
def test_two_syncs_and_a_running_callback_register_each_checkpoint_once(tmp_path):
    server = start_tracking_server(tmp_path / "server")
    command = _job_command(
        tmp_path / "results",
        server.uri,
        5,
        learning_rates=[1e-3, 3e-4],
        seconds_per_iteration=1.0,
    )
    experiment = tmp_path / "results" / tune_job.EXPERIMENT
    process = _start_job(command, tmp_path / "job.log")
    try:
        deadline = time.monotonic() + 240
        while len(list(experiment.glob("*/checkpoint_*"))) < 3 and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            time.sleep(0.5)
        syncs = [
            subprocess.Popen(
                [os.path.join(VENV_BIN, "rllib-mlflow"), "sync", str(experiment)]
                + ["--tracking-uri", server.uri, "--name", MODEL],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=_env(),
            )
            for _ in range(2)
        ]
        outputs = [s.communicate(timeout=600) for s in syncs]
        assert [s.returncode for s in syncs] == [0, 0], [o[1][-2000:] for o in outputs]
        returncode = _finish(process, timeout=400)
        assert returncode == 0, (tmp_path / "job.log").read_text()[-3000:]
        expected = _persisted(experiment)
        assert len(expected) == 10
        _assert_one_version_per_key_and_right_aliases(server.uri, MODEL, expected)
        client = _client(server.uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        per_trial = collections.Counter(r.data.tags.get("rllib_mlflow.trial_id") for r in runs)
        assert sorted(per_trial.values()) == [1, 1], per_trial  # one run per trial
    finally:
        if process.poll() is None:
            _kill_group(process)
        server.stop()


@pytest.mark.slow
def test_two_hosts_syncing_at_once_leave_one_version_per_key(unregistered_experiment, tmp_path):
    """No shared lock (each "host" has its own lock folder): the registry-side rule alone
    keeps one version per key; the duplicates delete themselves and their LoggedModels."""
    server = start_tracking_server(tmp_path / "server")
    try:
        syncs = [
            subprocess.Popen(
                [os.path.join(VENV_BIN, "rllib-mlflow"), "sync", str(unregistered_experiment)]
                + ["--tracking-uri", server.uri, "--name", "two-hosts", "--formats", "onnx"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=_env(RLLIB_MLFLOW_LOCK_DIR=str(tmp_path / f"host-{host}")),
            )
            for host in (1, 2)
        ]
        outputs = [s.communicate(timeout=600) for s in syncs]
        assert [s.returncode for s in syncs] == [0, 0], [o[1][-2000:] for o in outputs]
        expected = _persisted(unregistered_experiment)
        _assert_one_version_per_key_and_right_aliases(server.uri, "two-hosts", expected)
        # The race happened: both exported, and the later version deleted itself.
        assert "registered concurrently" in "".join(o[1] for o in outputs)
    finally:
        server.stop()
