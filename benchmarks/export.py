"""Export speed per format, and cold start to the first action in a fresh process.

    .venv/bin/python benchmarks/export.py [--ppo-checkpoint DIR] [--sac-checkpoint DIR]
                                          [--repeats 1]

Without checkpoint paths, a PPO CartPole and a SAC Pendulum policy are trained briefly first
(the test suite's configurations, tests/conftest.py).

Part 1, export: seconds for `export_checkpoint` with one format at a time (parity check
included, 1,000 observations), then all formats in one call with and without the parity
check. A warm-up export runs first so that one-time imports are not charged to a format.

Part 2, cold start: every way of getting an action runs in a FRESH Python process; the clock
runs from just before the process is spawned to its first computed action (interpreter start
and imports included), and the peak RSS is that process's `ru_maxrss` (Ray's worker
processes, started by `Algorithm.from_checkpoint`, are not counted). Ratios are against
`Algorithm.from_checkpoint`, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

FORMATS = ("saved_model", "h5", "onnx")

# Each loader: a script body that defines `act()` returning the first action. {export} is the
# export directory, {checkpoint} the RLlib checkpoint, {obs} a JSON list (one observation).
_PROLOGUE = """
import json, os, resource, sys, time
import numpy as np
obs = np.asarray({obs}, dtype=np.float32)[None]
"""
_EPILOGUE = """
action = act()
stamp = time.time()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps({{"stamp": stamp, "rss": rss, "action": np.asarray(action).tolist()}}))
sys.stdout.flush()
os._exit(0)  # do not charge Ray's or TF's shutdown to anyone
"""
LOADERS = {
    "TF SavedModel (tf.saved_model.load)": """
import tensorflow as tf
def act():
    loaded = tf.saved_model.load(os.path.join({export!r}, "saved_model"))
    serve = loaded.signatures["serving_default"]
    return serve(observations=tf.constant(obs))["actions"].numpy()
""",
    "Keras .h5 (keras.models.load_model)": """
import keras
def act():
    model = keras.models.load_model(os.path.join({export!r}, "model.h5"), safe_mode=True)
    return np.asarray(model(obs))  # action_dist_inputs
""",
    "ONNX (onnxruntime.InferenceSession)": """
import onnxruntime
def act():
    session = onnxruntime.InferenceSession(
        os.path.join({export!r}, "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["actions"], {{"observations": obs}})[0]
""",
    "serving.Policy, onnxruntime": """
from rllib_mlflow.serving import Policy
def act():
    return Policy({export!r}, backend="onnxruntime").compute_actions(obs)
""",
    "serving.Policy, tensorflow": """
from rllib_mlflow.serving import Policy
def act():
    return Policy({export!r}, backend="tensorflow").compute_actions(obs)
""",
    "RLModule.from_checkpoint + forward_inference": """
import torch
from ray.rllib.core.rl_module.rl_module import RLModule
def act():
    module = RLModule.from_checkpoint(
        os.path.join({checkpoint!r}, "learner_group", "learner", "rl_module", "default_policy"))
    with torch.no_grad():
        return module.forward_inference({{"obs": torch.from_numpy(obs)}})["action_dist_inputs"]
""",
    "Algorithm.from_checkpoint + forward_inference": """
import torch
from ray.rllib.algorithms.algorithm import Algorithm
def act():
    algo = Algorithm.from_checkpoint({checkpoint!r})
    with torch.no_grad():
        return algo.get_module().forward_inference({{"obs": torch.from_numpy(obs)}})[
            "action_dist_inputs"]
""",
}
BASELINE = "Algorithm.from_checkpoint + forward_inference"


def train(workdir: Path) -> tuple[str, str]:
    import ray

    from tests.conftest import train_checkpoint

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ppo = train_checkpoint("ppo_cartpole", workdir / "checkpoints")
        sac = train_checkpoint("sac_pendulum", workdir / "checkpoints")
    finally:
        ray.shutdown()
    return ppo.path, sac.path


def time_exports(checkpoint: str, workdir: Path, repeats: int) -> dict[str, float]:
    from rllib_mlflow.export import export_checkpoint

    def timed(formats, verify=True) -> float:
        samples = []
        for _ in range(repeats):
            out = Path(tempfile.mkdtemp(dir=workdir))
            start = time.perf_counter()
            export_checkpoint(checkpoint, out, formats=list(formats), verify=verify)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    timed(FORMATS)  # warm-up: imports, TF graph functions, torch tracer
    results = {fmt: timed([fmt]) for fmt in FORMATS}
    results["all formats"] = timed(FORMATS)
    results["all formats, verify=False"] = timed(FORMATS, verify=False)
    return results


def cold_start(name: str, export: str, checkpoint: str, obs: list) -> dict[str, float]:
    script = textwrap.dedent(_PROLOGUE.format(obs=json.dumps(obs)))
    script += textwrap.dedent(LOADERS[name].format(export=export, checkpoint=checkpoint))
    script += textwrap.dedent(_EPILOGUE.format())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.time()
    # Linux keeps a process's peak RSS across exec, so a child exec'd straight from this big
    # process would report our peak; a shell in between forks it from a small process.
    proc = subprocess.run(
        ["/bin/sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    return {"seconds": result["stamp"] - start, "rss": result["rss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ppo-checkpoint", help="a PPO CartPole algorithm checkpoint")
    parser.add_argument("--sac-checkpoint", help="a SAC Pendulum algorithm checkpoint")
    parser.add_argument("--repeats", type=int, default=1, help="median over N runs")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="rllib_mlflow_bench_"))
    if args.ppo_checkpoint and args.sac_checkpoint:
        checkpoints = {"PPO CartPole": args.ppo_checkpoint, "SAC Pendulum": args.sac_checkpoint}
    else:
        print("Training PPO CartPole and SAC Pendulum (2 iterations each)...", flush=True)
        ppo, sac = train(workdir)
        checkpoints = {
            "PPO CartPole": args.ppo_checkpoint or ppo,
            "SAC Pendulum": args.sac_checkpoint or sac,
        }
        print(f"Checkpoints: --ppo-checkpoint {ppo} --sac-checkpoint {sac}")

    print(f"\n== Export time (seconds, median of {args.repeats}; parity on 1,000 obs) ==")
    export_times = {
        label: time_exports(path, workdir, args.repeats) for label, path in checkpoints.items()
    }
    rows = list(next(iter(export_times.values())))
    print(f"{'format':<28}" + "".join(f"{label:>16}" for label in checkpoints))
    for row in rows:
        print(f"{row:<28}" + "".join(f"{export_times[label][row]:>16.2f}" for label in checkpoints))

    from rllib_mlflow.export import export_checkpoint

    for label, checkpoint in checkpoints.items():
        export = workdir / f"export_{label.split()[0].lower()}"
        (policy,) = export_checkpoint(checkpoint, export)
        obs = [0.0] * policy.policy["input"]["shape"][1]
        print(f"\n== Cold start to the first action, fresh process: {label} ==")
        results = {}
        for name in LOADERS:
            samples = [cold_start(name, str(export), checkpoint, obs) for _ in range(args.repeats)]
            results[name] = {
                "seconds": statistics.median(s["seconds"] for s in samples),
                "rss": statistics.median(s["rss"] for s in samples),
            }
        base = results[BASELINE]
        print(f"{'path':<48}{'seconds':>9}{'x Algo':>9}{'peak RSS MB':>13}{'x Algo':>9}")
        for name, r in results.items():
            print(
                f"{name:<48}{r['seconds']:>9.2f}{r['seconds'] / base['seconds']:>9.3f}"
                f"{r['rss'] / 2**20:>13.0f}{r['rss'] / base['rss']:>9.3f}"
            )


if __name__ == "__main__":
    main()
