"""Registry latency on the production stack (PostgreSQL + S3 + mlflow server) as it grows.

    python benchmarks/registry_scale.py [--versions 1000] [--samples 30] [--tracking-uri URI]

Without --tracking-uri it starts the native stack of the tests (tests/stack.py: initdb /
pg_ctl, SeaweedFS, `mlflow server` on 127.0.0.1) in a temporary directory and stops it at
the end. It registers `--versions` versions of one model the way rllib-mlflow does, minus
the export (a tiny artifact stands in for the model): the duplicate check
(`find_versions` by trial and iteration), `create_model_version` with the tags
rllib-mlflow writes, the `iter-N` alias and the conditional move of `best`. At 10, 100 and
1,000 versions it prints p50/p95 of registering one version (over the versions registered
since the previous mark), resolving ``models:/NAME@best``, and
``find_version(NAME, training_iteration=N)`` for random N. Target: lookup p50 < 50 ms at
1,000 versions, and no growth with the number of versions.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "registry-scale"
MARKS = (10, 100, 1000)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p95 * 1000


def _tags(iteration: int, trial_id: str, reward: float) -> dict[str, str]:
    from rllib_mlflow import __version__
    from rllib_mlflow.mlflow.versions import version_tags

    tags = version_tags(
        training_iteration=iteration,
        module_id="default_policy",
        trial_id=trial_id,
        trial_name=f"PPO_CartPole-v1_{trial_id}",
        algorithm="PPO",
        env_id="CartPole-v1",
        checkpoint_uri=f"s3://ray/ray-results/bench/{trial_id}/checkpoint_{iteration:06d}",
        formats="saved_model,h5,onnx",
        parity_max_abs_diff="1.2e-07",
        ray_version="2.60.0",
        mlflow_version="3.17.2",
        rllib_mlflow_version=__version__,
        best_metric="episode_return_mean",
        best_mode="max",
    )
    tags["episode_return_mean"] = f"{reward:.6g}"
    tags["metric.episode_return_mean"] = repr(reward)
    return tags


def register_one(client, run, iteration: int, trial_id: str, reward: float):
    """What `rllib_mlflow.register.registration._log_and_register` does around the export."""
    from rllib_mlflow.mlflow import versions

    existing = versions.find_versions(
        client, MODEL, training_iteration=iteration, trial=trial_id, module_id="default_policy"
    )
    if existing:
        return existing[-1]
    version = client.create_model_version(
        name=MODEL,
        source=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        tags=_tags(iteration, trial_id, reward),
    )
    versions.set_iteration_alias(client, MODEL, version)
    versions.update_best_alias(client, MODEL, "episode_return_mean", "max")
    return version


def benchmark(tracking_uri: str, versions: int, samples: int) -> None:
    from rllib_mlflow.mlflow import versions
    from rllib_mlflow.mlflow.client import client as mlflow_client

    client = mlflow_client(tracking_uri)
    experiment_id = client.create_experiment(f"registry-scale-{int(time.time())}")
    run = client.create_run(experiment_id)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model").mkdir()
        (Path(tmp) / "model" / "MLmodel").write_text("flavors: {}\n")
        client.log_artifacts(run.info.run_id, tmp)
    client.create_registered_model(MODEL)
    trial_id = "bench0001"
    rng = random.Random(0)
    marks = [m for m in MARKS if m <= versions] or [versions]
    print(f"tracking server: {tracking_uri}")
    print(f"{'versions':>9} | {'register p50/p95 ms':>20} | {'@best p50/p95 ms':>17} | "
          f"{'by iteration p50/p95 ms':>24}")  # fmt: skip
    registered = 0
    for mark in marks:
        times = []
        while registered < mark:
            registered += 1
            start = time.perf_counter()
            register_one(client, run, registered, trial_id, reward=rng.uniform(0, 500))
            times.append(time.perf_counter() - start)
        best, by_iteration = [], []
        for _ in range(samples):
            start = time.perf_counter()
            versions.find_version(f"models:/{MODEL}@best", tracking_uri=tracking_uri)
            best.append(time.perf_counter() - start)
            iteration = rng.randint(1, registered)
            start = time.perf_counter()
            found = versions.find_version(
                MODEL, training_iteration=iteration, tracking_uri=tracking_uri
            )
            by_iteration.append(time.perf_counter() - start)
            assert found.tags["training_iteration"] == str(iteration)
        reg = "{:7.1f} / {:7.1f}".format(*_percentiles(times))
        bst = "{:6.1f} / {:6.1f}".format(*_percentiles(best))
        itr = "{:6.1f} / {:6.1f}".format(*_percentiles(by_iteration))
        print(f"{mark:>9} | {reg:>20} | {bst:>17} | {itr:>24}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--tracking-uri", help="an existing server (default: start one)")
    args = parser.parse_args()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # one INFO line per version
    if args.tracking_uri:
        benchmark(args.tracking_uri, args.versions, args.samples)
        return
    from tests import stack

    with tempfile.TemporaryDirectory(prefix="registry_scale_") as tmp:
        root = Path(tmp)
        postgres = stack.start_postgres(root, "bench-password")
        servers = []
        try:
            key, secret = "bench", "bench-secret-key"
            seaweed, endpoint = stack.start_seaweedfs(root, key, secret)
            servers.append(seaweed)
            server = stack.start_mlflow_server(root, postgres, endpoint, key, secret)
            servers.append(server)
            print("stack: PostgreSQL", postgres.port, "| SeaweedFS", endpoint)
            benchmark(server.uri, args.versions, args.samples)
        finally:
            for process in reversed(servers):
                stack.kill(process)
            postgres.stop()


if __name__ == "__main__":
    main()
