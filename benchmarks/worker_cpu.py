"""Where an export worker's CPU goes: its imports, MLflow's store, and each checkpoint.

    python benchmarks/worker_cpu.py [--checkpoints 4]

Trains the seeded PPO CartPole of overhead.py under Tune (a checkpoint each iteration, no
callback), then, in a fresh process set up as an export worker is (one thread each, idle
priority, TF_USE_LEGACY_KERAS=1), measures the CPU seconds of: each group of what the worker
imports before its first checkpoint (rllib_mlflow.tune.worker._prewarm's modules), MLflow's
SQL store on a new SQLite database (its migrations included), and `log_checkpoint` of each
checkpoint (all three formats, parity checked). On a machine where training keeps every CPU
busy, this is what registering the checkpoints adds to `Tuner.fit()` (overhead.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from overhead import RUN  # noqa: E402 - the same training, so the same checkpoints

MEASURE = textwrap.dedent(
    """
    import glob, importlib, logging, sys, time
    from rllib_mlflow.tune.worker import prepare_worker_process

    prepare_worker_process()
    logging.getLogger("rllib_mlflow").setLevel(logging.WARNING)
    workdir = sys.argv[1]

    def cpu(label, work):
        start = time.process_time()
        work()
        print(f"  {label:<52} {time.process_time() - start:6.2f} CPU-s", flush=True)

    imports = {
        "TensorFlow and Keras (SavedModel, .h5)": ["rllib_mlflow.export.tensorflow"],
        "torch and the ONNX exporter": ["rllib_mlflow.export.onnx", "torch.onnx"],
        "mlflow and our flavor": ["rllib_mlflow.mlflow.flavor", "mlflow.pyfunc"],
        "RLlib": ["ray.rllib.core", "ray.rllib.algorithms"],
        "the rest of _prewarm's list": ["rllib_mlflow.register.registration",
            "rllib_mlflow.export.parity", "onnx", "onnxruntime", "rllib_mlflow.mlflow.card",
            "rllib_mlflow.play.replay"],
    }
    total = time.process_time()
    print("imports:")
    for label, modules in imports.items():
        cpu(label, lambda: [importlib.import_module(m) for m in modules])
    uri = f"sqlite:///{workdir}/measure.db"
    from rllib_mlflow.mlflow.client import client
    print("MLflow:")
    cpu("SQL store on a new database (migrations)", lambda: client(uri).search_experiments())
    from rllib_mlflow import log_checkpoint
    print("registrations (all three formats, parity checked):")
    checkpoints = sorted(glob.glob(f"{workdir}/results/no_callback/*/checkpoint_*"))
    for i, path in enumerate(checkpoints, 1):
        cpu(f"checkpoint {i}", lambda: log_checkpoint(
            path, "worker-cpu", tracking_uri=uri, training_iteration=i, trial_id="t"))
    print(f"total: {time.process_time() - total:.2f} CPU-s")
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=4)
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory() as workdir:
        trained = subprocess.run(
            [sys.executable, "-c", RUN, "no_callback", str(args.checkpoints), workdir],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        if trained.returncode:
            raise SystemExit(f"training failed:\n{trained.stderr[-4000:]}")
        print(f"export worker CPU, PPO CartPole, {args.checkpoints} checkpoints:", flush=True)
        measured = subprocess.run([sys.executable, "-c", MEASURE, workdir], env=env, check=False)
        if measured.returncode:
            raise SystemExit(measured.returncode)


if __name__ == "__main__":
    main()
