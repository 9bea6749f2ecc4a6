"""Cold start to the first action of a registered policy, and `mlflow models serve` throughput.

Every load path runs in a fresh Python process and reports the wall time from the process's
spawn to its first computed action and its peak RSS (`ru_maxrss` of that process; Ray's
worker processes, started by `Algorithm.from_checkpoint`, are not counted):

- `rllib_mlflow.load_policy("models:/NAME@best")` with ONNX Runtime, TensorFlow, and LiteRT
  (`backend="litert"`, float32, and `"litert_int8"`)
- `mlflow.pyfunc.load_model("models:/NAME@best").predict(obs)`
- `RLModule.from_checkpoint(<checkpoint>/learner_group/learner/rl_module/default_policy)`
- `Algorithm.from_checkpoint(<checkpoint>)`

Then it serves the version with `mlflow models serve --env-manager local` and measures
requests per second for single observations (sequential requests for ~5 s) and the latency
of a batch of 1,024 observations.

The registry lives on a real `mlflow server` (SQLite backend) started here on a free port.

    .venv/bin/python benchmarks/load.py [--checkpoint DIR] [--repeats 3]

Without --checkpoint, a PPO CartPole policy is trained for two iterations first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mlflow_server import (  # noqa: E402
    post_json,
    start_model_server,
    start_tracking_server,
    subprocess_env,
)

NAME = "bench-cartpole"
TARGET_SECONDS, TARGET_MB, TARGET_SPEEDUP = 1.5, 250, 10

# Each child prints {"first_action_at": epoch seconds, "maxrss_mb": ..., "actions": [...]}.
_CHILD_TAIL = """
first_action_at = time.time()
import resource
print("RESULT " + json.dumps({
    "first_action_at": first_action_at,
    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "actions": np.asarray(actions).reshape(len(obs), -1)[:, 0].tolist(),
    "modules": sorted({m.split(".")[0] for m in sys.modules} & {"ray", "torch", "tensorflow"}),
}))
"""

CASES = {
    "load_policy (onnxruntime)": """
        from rllib_mlflow import load_policy
        policy = load_policy("models:/NAME@best", backend="onnxruntime", tracking_uri=URI)
        actions = policy.compute_actions(obs)
    """,
    "load_policy (tensorflow)": """
        from rllib_mlflow import load_policy
        policy = load_policy("models:/NAME@best", backend="tensorflow", tracking_uri=URI)
        actions = policy.compute_actions(obs)
    """,
    "load_policy (litert)": """
        from rllib_mlflow import load_policy
        policy = load_policy("models:/NAME@best", backend="litert", tracking_uri=URI)
        actions = policy.compute_actions(obs)
    """,
    "load_policy (litert_int8)": """
        from rllib_mlflow import load_policy
        policy = load_policy("models:/NAME@best", backend="litert_int8", tracking_uri=URI)
        actions = policy.compute_actions(obs)
    """,
    "mlflow.pyfunc.load_model": """
        import mlflow
        mlflow.set_tracking_uri(URI)
        actions = mlflow.pyfunc.load_model("models:/NAME@best").predict(obs)
    """,
    "RLModule.from_checkpoint": """
        import torch
        from ray.rllib.core.rl_module.rl_module import RLModule
        module = RLModule.from_checkpoint(
            CHECKPOINT + "/learner_group/learner/rl_module/default_policy"
        )
        with torch.no_grad():
            out = module.forward_inference({"obs": torch.from_numpy(obs)})
        actions = out["action_dist_inputs"].numpy().argmax(-1)
    """,
    "Algorithm.from_checkpoint": """
        import torch
        from ray.rllib.algorithms.algorithm import Algorithm
        algo = Algorithm.from_checkpoint(CHECKPOINT)
        with torch.no_grad():
            out = algo.get_module().forward_inference({"obs": torch.from_numpy(obs)})
        actions = out["action_dist_inputs"].numpy().argmax(-1)
    """,
}


def child_script(body: str, uri: str, checkpoint: str, obs_file: str) -> str:
    head = "import json, sys, time\nimport numpy as np\n"
    head += f"URI, CHECKPOINT = {uri!r}, {checkpoint!r}\nobs = np.load({obs_file!r})\n"
    return head + textwrap.dedent(body).replace("NAME", NAME) + _CHILD_TAIL


def run_cold(script: str, workdir: Path) -> dict:
    env = subprocess_env(RAY_AUTH_MODE="disabled")
    spawned = time.time()
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    out["seconds"] = out.pop("first_action_at") - spawned
    return out


def train_checkpoint(directory: Path) -> str:
    import os

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from tests.conftest import train_checkpoint as train

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        return train("ppo_cartpole", directory).path
    finally:
        ray.shutdown()


def cartpole_observations(count: int) -> np.ndarray:
    from tests.policies import cartpole_observations as observe

    return observe(count)


def measure_serving(uri: str, workdir: Path, observations: np.ndarray) -> dict:
    import requests

    server = start_model_server(f"models:/{NAME}@best", uri, workdir / "serve.log")
    try:
        url = f"{server.uri}/invocations"
        session = requests.Session()
        single = [{"inputs": [o.tolist()]} for o in observations]
        for payload in single[:20]:  # warm up
            session.post(url, json=payload).raise_for_status()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < 5.0:
            session.post(url, json=single[count % len(single)]).raise_for_status()
            count += 1
        rps = count / (time.perf_counter() - start)
        batch = np.resize(observations, (1024, observations.shape[1]))
        payload = json.dumps({"inputs": batch.tolist()})
        latencies = []
        for _ in range(20):
            t = time.perf_counter()
            response = session.post(url, data=payload, headers={"Content-Type": "application/json"})
            response.raise_for_status()
            latencies.append(time.perf_counter() - t)
        assert len(response.json()["predictions"]) == 1024
        status, _ = post_json(url, {"inputs": [observations[0].tolist()]})
        assert status == 200
        return {
            "requests": count,
            "rps": rps,
            "batch_ms_median": 1000 * statistics.median(latencies),
            "batch_ms_p90": 1000 * sorted(latencies)[int(0.9 * len(latencies)) - 1],
        }
    finally:
        server.stop()


def register(checkpoint: str, uri: str) -> None:
    from rllib_mlflow import log_checkpoint

    log_checkpoint(
        checkpoint,
        NAME,
        metrics={"env_runners": {"episode_return_mean": 1.0}},
        formats=("saved_model", "h5", "onnx", "tflite", "tflite_int8"),
        tracking_uri=uri,
    )


def in_child(*args: str) -> str:
    """Run this script with `args` in a child process: training and exporting load Ray, torch
    and TensorFlow, and Linux keeps a process's peak RSS across fork and exec, so the parent
    of the measured processes must stay small for their ru_maxrss to mean anything."""
    result = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        env=subprocess_env(RAY_AUTH_MODE="disabled"),
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return result.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="an RLlib PPO CartPole checkpoint directory")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per case")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--train", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--register", nargs=2, metavar=("CKPT", "URI"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train:
        print(train_checkpoint(Path(args.train)))
        return 0
    if args.register:
        register(*args.register)
        print("registered")
        return 0

    with tempfile.TemporaryDirectory(prefix="rllib_mlflow_bench_") as tmp:
        workdir = Path(tmp)
        checkpoint = args.checkpoint or in_child("--train", str(workdir / "checkpoints"))
        tracking = start_tracking_server(workdir / "mlflow")
        try:
            in_child("--register", checkpoint, tracking.uri)
            observations = cartpole_observations(256)
            np.save(workdir / "obs.npy", observations[:1])
            report(args, tracking.uri, checkpoint, workdir, observations)
        finally:
            tracking.stop()
    return 0


def report(args, uri: str, checkpoint: str, workdir: Path, observations: np.ndarray) -> None:
    rows, actions = {}, {}
    for name, body in CASES.items():
        script = child_script(body, uri, checkpoint, str(workdir / "obs.npy"))
        runs = [run_cold(script, workdir) for _ in range(args.repeats)]
        rows[name] = {
            "seconds": statistics.median(r["seconds"] for r in runs),
            "min_seconds": min(r["seconds"] for r in runs),
            "maxrss_mb": statistics.median(r["maxrss_mb"] for r in runs),
            "modules": runs[0]["modules"],
        }
        actions[name] = runs[0]["actions"]
        print(f"  measured {name}: {rows[name]['seconds']:.2f} s", file=sys.stderr)
    assert len({json.dumps(a) for a in actions.values()}) == 1, actions

    base = rows["load_policy (onnxruntime)"]
    algo = rows["Algorithm.from_checkpoint"]
    print(f"\nCold start to the first action, median of {args.repeats} fresh processes")
    header = f"{'path':28} {'seconds':>8} {'min':>6} {'peak RSS':>9} {'x onnx':>7}  imported"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        print(
            f"{name:28} {row['seconds']:8.2f} {row['min_seconds']:6.2f} "
            f"{row['maxrss_mb']:6.0f} MB {row['seconds'] / base['seconds']:7.1f}  "
            f"{','.join(row['modules']) or '-'}"
        )
    speedup = algo["seconds"] / base["seconds"]
    print(
        f"\nload_policy (onnxruntime): {base['seconds']:.2f} s (target < {TARGET_SECONDS} s), "
        f"{base['maxrss_mb']:.0f} MB (target < {TARGET_MB} MB), {speedup:.1f}x faster than "
        f"Algorithm.from_checkpoint (target >= {TARGET_SPEEDUP}x): "
        + (
            "MET"
            if base["seconds"] < TARGET_SECONDS
            and base["maxrss_mb"] < TARGET_MB
            and speedup >= TARGET_SPEEDUP
            else "NOT MET"
        )
    )
    import resource

    parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(peak RSS of this launcher process, a floor for the column above: {parent_mb:.0f} MB)")
    if args.skip_serving:
        return
    serving = measure_serving(uri, workdir, observations)
    print("\nmlflow models serve --env-manager local (1 worker), models:/NAME@best")
    print(
        f"  single observations, sequential: {serving['rps']:.0f} requests/s "
        f"({serving['requests']} requests, {1000 / serving['rps']:.1f} ms each)"
    )
    print(
        f"  batch of 1,024 observations: {serving['batch_ms_median']:.1f} ms median, "
        f"{serving['batch_ms_p90']:.1f} ms p90 (20 requests)"
    )


if __name__ == "__main__":
    sys.exit(main())
