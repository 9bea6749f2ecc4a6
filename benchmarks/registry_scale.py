"""What one registration and the CLI reads cost as a registered model grows, on SQLite and on
`mlflow server` + PostgreSQL (the team stack), next to MLflow's own bare calls.

    python benchmarks/registry_scale.py [--counts 100,1000,10000] [--samples 5]
                                        [--stores sqlite,postgres]

For each store and each N, a fresh registered model is seeded with N versions straight in
MLflow's database (tests/registry_seed.py: the rows and tags rllib-mlflow writes, in
seconds), then:

- `log_checkpoint` of a new training iteration of a real PPO CartPole checkpoint (ONNX,
  parity checked), median of --samples, split into the export (`export_snapshot`) and the
  rest (LoggedModel, version, tags, `best`, cards, summary);
- MLflow's own bare `create_model_version` + `set_registered_model_alias` at the same N;
- ours = total - export - MLflow's bare calls: what rllib-mlflow adds. Target: ours at the
  largest N <= 1.5x ours at the smallest;
- `rllib-mlflow versions NAME --limit 20 --json` and `prune NAME --keep-last 5 --dry-run
  --json` as commands (wall clock, interpreter start included), and the same two reads in
  process (`version_records`, `plan_prune`) with the client the commands use (our RestClient
  over HTTP, our SqlReader on a database);
- MLflow lists all: MlflowClient's `search_model_versions` over every version, in pages of
  1,000, which bounds what a full read (a prune's plan) costs through MLflow.

The checkpoint is trained once (about a minute) unless --checkpoint names one.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

CLI = str(Path(sys.executable).with_name("rllib-mlflow"))


class _ExportTimer:
    """Times `export_snapshot` inside `log_checkpoint` (the registration's own call)."""

    def __init__(self):
        from rllib_mlflow.register import registration

        self.seconds = 0.0
        self._module = registration
        self._export = registration.export_snapshot

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self._export(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        registration.export_snapshot = timed


def _train_checkpoint(directory: Path) -> str:
    import ray

    from tests.conftest import train_checkpoint

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        return train_checkpoint("ppo_cartpole", directory).path
    finally:
        ray.shutdown()


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def _registrations(checkpoint, uri, name, run_id, first_iteration, samples, timer):
    from rllib_mlflow import log_checkpoint

    totals, exports = [], []
    for k in range(samples):
        timer.seconds = 0.0
        start = time.perf_counter()
        log_checkpoint(
            checkpoint, name, training_iteration=first_iteration + k, trial_id="bench",
            run_id=run_id, formats=["onnx"], tracking_uri=uri,
            metrics={"env_runners": {"episode_return_mean": 1000.0 + k}},  # moves `best`
        )  # fmt: skip
        totals.append(time.perf_counter() - start)
        exports.append(timer.seconds)
    return _median(totals), _median(exports)


def _bare_mlflow(uri: str, name: str, source: str, run_id: str, samples: int) -> float:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        version = client.create_model_version(name, source, run_id=run_id, tags={"bare": "1"})
        client.set_registered_model_alias(name, "bare", version.version)
        times.append(time.perf_counter() - start)
    client.delete_registered_model_alias(name, "bare")
    return _median(times)


def _command(*args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"rllib-mlflow {' '.join(args)} failed: {done.stderr[-2000:]}")
    return elapsed


def _reads(uri: str, name: str, samples: int) -> dict[str, float]:
    from mlflow import MlflowClient

    from rllib_mlflow.mlflow import stores
    from rllib_mlflow.mlflow.listing import VersionQuery, version_records
    from rllib_mlflow.mlflow.retention import plan_prune
    from rllib_mlflow.mlflow.versions import iter_versions

    mlflow_client = stores.reader(uri)  # what the commands read with
    bare_client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    listed, planned, versions_cli, prune_cli, every = [], [], [], [], []
    for _ in range(max(1, samples // 2)):
        start = time.perf_counter()
        list(iter_versions(bare_client, [f"name = '{name}'"]))  # MLflow's search, in pages
        every.append(time.perf_counter() - start)
        start = time.perf_counter()
        version_records(mlflow_client, name, VersionQuery(limit=20))
        listed.append(time.perf_counter() - start)
        start = time.perf_counter()
        plan_prune(mlflow_client, name, keep_last=5)
        planned.append(time.perf_counter() - start)
        versions_cli.append(
            _command("versions", name, "--limit", "20", "--json", "-q", "--tracking-uri", uri)
        )
        prune_cli.append(
            _command(
                "prune",
                name,
                "--keep-last",
                "5",
                "--dry-run",
                "--json",
                "-q",
                "--tracking-uri",
                uri,
            )  # fmt: skip
        )
    return {
        "versions_cli": _median(versions_cli),
        "prune_cli": _median(prune_cli),
        "versions_call": _median(listed),
        "prune_call": _median(planned),
        "mlflow_lists_all": _median(every),
    }


def _measure(store: str, uri: str, db_uri: str, count: int, checkpoint: str, samples: int):
    from mlflow import MlflowClient

    from tests.registry_seed import seed_versions

    name = f"scale-{store}-{count}"
    start = time.perf_counter()
    seed_versions(db_uri, name, count)
    seeded = time.perf_counter() - start
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment(f"{name}-{int(time.time())}")
    run_id = client.create_run(experiment).info.run_id
    timer = _ExportTimer()
    # One unmeasured registration: imports, the run's first metrics, the export's caches.
    _registrations(checkpoint, uri, name, run_id, count + 1, 1, timer)
    total, export = _registrations(checkpoint, uri, name, run_id, count + 2, samples, timer)
    source = f"{client.get_run(run_id).info.artifact_uri}/bare"  # a plain URI: no lookup
    bare = _bare_mlflow(uri, name, source, run_id, samples)
    reads = _reads(uri, name, samples)
    client.set_terminated(run_id)
    return {"count": count, "seeded_s": seeded, "total": total, "export": export,
            "bare": bare, "ours": total - export - bare, **reads}  # fmt: skip


def _print(store: str, rows: list[dict]) -> None:
    base = rows[0]["ours"]
    print(f"\n{store}: seconds, median of the samples (N = versions already in the model)")
    header = ("N", "log_checkpoint", "export", "MLflow bare", "ours", "ours/ours@first",
              "versions --limit 20", "prune --dry-run",
              "(in process: versions, prune)", "MLflow lists all")  # fmt: skip
    print(" | ".join(header))
    for row in rows:
        cells = [
            f"{row['count']:,}", f"{row['total']:.3f}", f"{row['export']:.3f}",
            f"{row['bare']:.3f}", f"{row['ours']:.3f}", f"{row['ours'] / base:.2f}x",
            f"{row['versions_cli']:.2f}", f"{row['prune_cli']:.2f}",
            f"{row['versions_call']:.3f}, {row['prune_call']:.3f}",
            f"{row['mlflow_lists_all']:.2f}",
        ]  # fmt: skip
        print(" | ".join(cells), flush=True)


def _sqlite(root: Path, counts, checkpoint, samples) -> list[dict]:
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for count in counts:
        uri = f"sqlite:///{root / f'scale-{count}.db'}"
        rows.append(_measure("sqlite", uri, uri, count, checkpoint, samples))
    return rows


def _postgres(root: Path, counts, checkpoint, samples) -> list[dict]:
    from tests import stack

    with stack.running_stack(root / "stack") as production:
        os.environ.update(production.client_environment())
        postgres = production.postgres
        db_uri = (
            f"postgresql+psycopg2://{stack.POSTGRES_USER}:{postgres.password}"
            f"@127.0.0.1:{postgres.port}/{stack.POSTGRES_DB}"
        )
        return [
            _measure("postgres", production.tracking_uri, db_uri, count, checkpoint, samples)
            for count in counts
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="100,1000,10000")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--checkpoint", help="a PPO CartPole checkpoint (default: train one)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="registry_scale_") as tmp:
        root = Path(tmp)
        checkpoint = args.checkpoint or _train_checkpoint(root / "checkpoint")
        for store in args.stores.split(","):
            measure = {"sqlite": _sqlite, "postgres": _postgres}[store]
            _print(store, measure(root / store, counts, checkpoint, args.samples))


if __name__ == "__main__":
    main()
