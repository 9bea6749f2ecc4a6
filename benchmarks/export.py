"""Export speed per format, and cold start to the first action in a fresh process.

    .venv/bin/python benchmarks/export.py [--ppo-checkpoint DIR] [--sac-checkpoint DIR]
                                          [--lstm-checkpoint DIR] [--custom-checkpoint DIR]
                                          [--old-tf2-checkpoint DIR] [--repeats 1]

Without checkpoint paths, the policies are trained briefly first (the test suite's
configurations, tests/conftest.py): PPO CartPole, SAC Pendulum, PPO with an LSTM on CartPole
(Keras-rebuilt LSTM; parity over 8 sequences carrying the state) and Ray's example
CustomActionDistributionRLModule (traced to ONNX; SavedModel and .h5 converted by onnx2tf);
and a TF2 PPO CartPole on RLlib's old API stack (tests/old_stack.py's "ppo_tf2_cartpole",
trained in its own process: RLlib's TF2 policies need TensorFlow started with
TF_USE_LEGACY_KERAS=1, and this process runs Keras 3).

Part 1, export: one row per policy, seconds for `export_checkpoint` with one format at a time
(parity check included, 1,000 observations; `tflite` and `tflite_int8` include the SavedModel
they are converted from, and int8 its calibration and agreement measurement), then the default
formats in one call with and without the parity check. A warm-up export runs first so that
one-time imports are not charged to a format. The old-stack row is timed the same way in a
fresh process (which sets TF_USE_LEGACY_KERAS=1 itself, as rllib-mlflow's export workers
do); it is in this table only. Then the file sizes of ONNX, LiteRT float32 and
LiteRT int8, and, in this process, each backend's latency for one observation and its
throughput on a batch of 1,024 (ONNX Runtime, TensorFlow, LiteRT float32, LiteRT int8).

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
LITERT = ("tflite", "tflite_int8")
# backend -> the format it runs
BACKENDS = {"onnxruntime": "onnx", "tensorflow": "saved_model", "litert": "tflite",
            "litert_int8": "tflite_int8"}  # fmt: skip

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
from rllib_mlflow.policy.serving import Policy
def act():
    return Policy({export!r}, backend="onnxruntime").compute_actions(obs)
""",
    "serving.Policy, tensorflow": """
from rllib_mlflow.policy.serving import Policy
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


# label -> (command-line option, tests.conftest configuration)
POLICIES = {
    "PPO CartPole": ("ppo_checkpoint", "ppo_cartpole"),
    "SAC Pendulum": ("sac_checkpoint", "sac_pendulum"),
    "PPO LSTM CartPole": ("lstm_checkpoint", "ppo_lstm"),
    "custom module (Ray example)": ("custom_checkpoint", "ppo_custom_distribution"),
}
COLD_START = ("PPO CartPole", "SAC Pendulum")  # stateless, one "observations" input
# label -> (command-line option, tests.old_stack configuration)
OLD_STACK = {"old stack PPO TF2 CartPole": ("old_tf2_checkpoint", "ppo_tf2_cartpole")}


def train(workdir: Path, configs: list[str]) -> dict[str, str]:
    import ray

    from tests.conftest import train_checkpoint

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        return {name: train_checkpoint(name, workdir / "checkpoints").path for name in configs}
    finally:
        ray.shutdown()


def train_old_stack(workdir: Path, configs: list[str]) -> dict[str, str]:
    """Old-API-stack checkpoints, trained in their own process (tests.old_stack)."""
    from tests.old_stack import train_all

    out = workdir / "old_stack_checkpoints"
    out.mkdir()
    return {name: checkpoint.path for name, checkpoint in train_all(out, configs).items()}


def time_exports_in_fresh_process(checkpoint: str, workdir: Path, repeats: int):
    """`time_exports` in a new Python process, for the old stack's TF2 policies (Keras 2)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--time-exports-of", checkpoint, "--repeats", str(repeats)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"},
        cwd=str(workdir),
        timeout=1800,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"timing the export of {checkpoint} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


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
    results = {fmt: timed([fmt]) for fmt in (*FORMATS, *LITERT)}
    results["all"] = timed(FORMATS)
    results["all, no parity"] = timed(FORMATS, verify=False)
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


def backends(checkpoints: dict[str, str], workdir: Path) -> None:
    """File sizes, and each backend's latency and throughput, side by side per policy."""
    from rllib_mlflow.export import export_checkpoint
    from rllib_mlflow.export.parity import sample_observations
    from rllib_mlflow.policy.serving import Policy
    from rllib_mlflow.rllib.reader import read_snapshots

    print("\n== LiteRT beside ONNX: file size (KB), one observation (ms), 1,024 (obs/s) ==")
    print(f"{'policy':<30}{'backend':<14}{'KB':>9}{'x onnx':>8}{'1 obs ms':>10}{'obs/s':>12}")
    for label, checkpoint in checkpoints.items():
        out = Path(tempfile.mkdtemp(dir=workdir))
        (policy,) = export_checkpoint(checkpoint, out, formats=[*FORMATS, *LITERT])
        (snapshot,) = read_snapshots(checkpoint)
        batch = sample_observations(snapshot, 1024)
        sizes = {fmt: _size(out / policy.metadata["files"][fmt]) for fmt in policy.formats}
        for backend, fmt in BACKENDS.items():
            if fmt not in policy.formats:
                print(f"{label:<30}{backend:<14}  refused: {policy.refused.get(fmt, '?')[:60]}")
                continue
            single, throughput = _speed(Policy(str(out), backend=backend), batch)
            print(
                f"{label:<30}{backend:<14}{sizes[fmt] / 1024:>9.1f}"
                f"{sizes[fmt] / sizes['onnx']:>8.2f}{single * 1000:>10.3f}{throughput:>12.0f}"
            )


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size


def _speed(policy, batch) -> tuple[float, float]:
    """Median seconds for one observation (a batch of 1), and observations per second on a
    batch of 1,024; stateful policies step from their initial state."""

    def act(observations):
        if not policy.is_stateful:
            return policy.compute_actions(observations)
        return policy.step(
            observations, policy.initial_state(len(observations)), [0.0] * len(observations)
        )

    one = batch[:1]
    for _ in range(20):  # warm-up: graph functions, allocations
        act(one)
    singles = []
    for _ in range(200):
        start = time.perf_counter()
        act(one)
        singles.append(time.perf_counter() - start)
    act(batch)
    start = time.perf_counter()
    for _ in range(10):
        act(batch)
    return statistics.median(singles), 10 * len(batch) / (time.perf_counter() - start)


def _old_stack_checkpoints(args, workdir: Path) -> dict[str, str]:
    """{label: checkpoint} of the old-stack rows: given, or trained now."""
    given = {label: getattr(args, option) for label, (option, _) in OLD_STACK.items()}
    missing = [OLD_STACK[label][1] for label, path in given.items() if not path]
    if not missing:
        return given
    print(f"Training {', '.join(missing)} (old API stack) briefly...", flush=True)
    trained = train_old_stack(workdir, missing)
    given = {label: path or trained[OLD_STACK[label][1]] for label, path in given.items()}
    options = (f"--{OLD_STACK[k][0].replace('_', '-')} {v}" for k, v in given.items())
    print("Checkpoints: " + " ".join(options))
    return given


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option, config in POLICIES.values():
        parser.add_argument(f"--{option.replace('_', '-')}", help=f"a {config} checkpoint")
    for option, config in OLD_STACK.values():
        parser.add_argument(f"--{option.replace('_', '-')}", help=f"a {config} checkpoint")
    parser.add_argument("--repeats", type=int, default=1, help="median over N runs")
    parser.add_argument("--time-exports-of", help=argparse.SUPPRESS)  # the fresh process
    args = parser.parse_args()
    if args.time_exports_of:
        workdir = Path(tempfile.mkdtemp(prefix="rllib_mlflow_bench_"))
        times = time_exports(args.time_exports_of, workdir, args.repeats)
        print("RESULT " + json.dumps(times))
        return

    workdir = Path(tempfile.mkdtemp(prefix="rllib_mlflow_bench_"))
    given = {label: getattr(args, option) for label, (option, _) in POLICIES.items()}
    missing = [POLICIES[label][1] for label, path in given.items() if not path]
    if missing:
        print(f"Training {', '.join(missing)} briefly...", flush=True)
        trained = train(workdir, missing)
        given = {label: path or trained[POLICIES[label][1]] for label, path in given.items()}
        print(
            "Checkpoints: "
            + " ".join(f"--{POLICIES[k][0].replace('_', '-')} {v}" for k, v in given.items())
        )
    checkpoints = given
    old_stack = _old_stack_checkpoints(args, workdir)

    print(f"\n== Export time (seconds, median of {args.repeats}; parity on 1,000 obs) ==")
    export_times = {
        label: time_exports(path, workdir, args.repeats) for label, path in checkpoints.items()
    }
    for label, path in old_stack.items():
        export_times[label] = time_exports_in_fresh_process(path, workdir, args.repeats)
    columns = list(next(iter(export_times.values())))
    print(f"{'policy':<30}" + "".join(f"{column:>16}" for column in columns))
    for label, times in export_times.items():
        print(f"{label:<30}" + "".join(f"{times[column]:>16.2f}" for column in columns))
    backends(checkpoints, workdir)
    checkpoints = {label: checkpoints[label] for label in COLD_START}

    from rllib_mlflow.export import export_checkpoint

    for label, checkpoint in checkpoints.items():
        export = workdir / f"export_{label.split()[0].lower()}"
        (policy,) = export_checkpoint(checkpoint, export)
        obs = [0.0] * policy.metadata["input"]["shape"][1]
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
