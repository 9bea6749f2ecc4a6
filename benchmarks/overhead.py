"""Wall-time overhead of MLflowCheckpointCallback on a Tune run, side by side.

    python benchmarks/overhead.py [--iterations 8 [24]] [--rounds 3] [--only-ac]

The same seeded PPO CartPole training, a checkpoint every iteration, runs (a) with no
callback, (a') with a Tune callback that does nothing, (b) with Ray's own
MLflowLoggerCallback, (c) with rllib-mlflow's MLflowCheckpointCallback, alternating a, a',
b, c per round so that machine drift hits all alike. (a') is what passing any callback to
Tune costs: Ray's callback telemetry (`ray.air._internal.usage.tag_callbacks`) then imports
`ray.air.integrations.mlflow`, and so mlflow, in the driver before the trials start.

Each run is a fresh process (Ray start-up excluded from the timing: the clock covers
`Tuner.fit()` only, which for (c) includes the final flush, i.e. waiting until every
checkpoint is registered; afterwards the run checks that there is one version per
iteration). Prints the median wall times and the driver's CPU time in `fit()`, the ratios
c/a, a'/a, c/a' and c/b, the lag from a checkpoint being queued to its version being
registered (p50, p95, from the journal), how long `fit()` went on after the last
checkpoint was stored, for each variant (for (c), the final flush included), the export
worker's CPU seconds (what it takes from training, at idle priority), and the machine's
speed (seconds per iteration without a callback), to compare runs across machines.
With two lengths, the extra wall time c - a splits into a fixed cost and a cost per
checkpoint (a straight line through the two). Target: c/a' <= 1.02, c/b <= 0.85.
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

RUN = textwrap.dedent(
    """
    import glob, json, os, resource, sys, time
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import tune
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    variant, iterations, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    uri = f"sqlite:///{workdir}/mlflow.db"
    callbacks = []
    if variant == "any_callback":
        callbacks = [tune.Callback()]
    elif variant == "ray_logger":
        from ray.air.integrations.mlflow import MLflowLoggerCallback
        callbacks = [MLflowLoggerCallback(tracking_uri=uri, experiment_name="overhead")]
    elif variant == "rllib_mlflow":
        from rllib_mlflow import MLflowCheckpointCallback
        callbacks = [MLflowCheckpointCallback("overhead", tracking_uri=uri)]
    config = (
        PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=1)
        .training(train_batch_size_per_learner=2000, minibatch_size=250, num_epochs=4)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64]))
        .debugging(seed=0)
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner("PPO", param_space=config, run_config=tune.RunConfig(
        name=variant, storage_path=f"{workdir}/results", verbose=0, callbacks=callbacks,
        stop={"training_iteration": iterations},
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1)))
    start, cpu = time.perf_counter(), time.process_time()
    tuner.fit()
    elapsed, ended = time.perf_counter() - start, time.time()
    cpu = time.process_time() - cpu
    # The export worker is the driver's only child that ends (Ray's run until shutdown); it
    # exits within a second of fit() (outside the clock).
    time.sleep(2)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # When the last checkpoint reached storage: the same mark for every variant.
    marks = glob.glob(f"{workdir}/results/{variant}/*/checkpoint_*/rllib_checkpoint.json")
    result = {"variant": variant, "seconds": elapsed, "driver_cpu": cpu,
              "tail": ended - max(os.path.getmtime(mark) for mark in marks),
              "worker_cpu": children.ru_utime + children.ru_stime}
    if variant == "rllib_mlflow":  # outside the clock: was every checkpoint registered?
        from mlflow import MlflowClient
        result["versions"] = len(MlflowClient(uri).search_model_versions("name = 'overhead'"))
        journal = f"{workdir}/results/{variant}/rllib_mlflow_journal.jsonl"
        entries = [json.loads(line) for line in open(journal)]
        queued = {e["key"]: e["time"] for e in entries if e["event"] == "queued"}
        done = {e["key"]: e["time"] for e in entries if e["event"] == "registered"}
        result["lags"] = [done[k] - queued[k] for k in queued if k in done]
    print("RESULT " + json.dumps(result))
    """
)
VARIANTS = ("no_callback", "any_callback", "ray_logger", "rllib_mlflow")


def run_once(variant: str, iterations: int) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        done = subprocess.run(
            [sys.executable, "-c", RUN, variant, str(iterations), workdir],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            check=False,
        )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            if variant == "rllib_mlflow" and result["versions"] != iterations:
                raise RuntimeError(
                    f"rllib_mlflow registered {result['versions']} of {iterations} checkpoints"
                )
            return result
    raise RuntimeError(f"{variant} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def measure(iterations: int, rounds: int, variants: tuple[str, ...] = VARIANTS) -> float:
    """Print one length's medians and ratios; return the extra seconds c - a."""
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for round_number in range(1, rounds + 1):
        for variant in variants:
            result = run_once(variant, iterations)
            results[variant].append(result)
            print(f"round {round_number}: {variant:<13} {result['seconds']:7.2f} s", flush=True)
    times = {v: [r["seconds"] for r in rs] for v, rs in results.items()}
    median = {v: statistics.median(t) for v, t in times.items()}
    print(f"\n{iterations} iterations, a checkpoint each, median of {rounds} rounds:")
    for variant in variants:
        spread = max(times[variant]) - min(times[variant])
        cpu = statistics.median(r["driver_cpu"] for r in results[variant])
        worker = statistics.median(r["worker_cpu"] for r in results[variant])
        print(
            f"  {variant:<13} {median[variant]:7.2f} s (spread {spread:.2f} s), "
            f"driver CPU {cpu:.2f} s, export worker CPU {worker:.2f} s"
        )
    ours, none = median["rllib_mlflow"], median["no_callback"]
    # How fast this machine trains, so that readers can compare runs on other machines.
    print(f"  machine speed: {none / iterations:.2f} s per iteration without a callback")
    rounds_ca = ", ".join(f"{c / a:.3f}" for c, a in zip(times["rllib_mlflow"], times[VARIANTS[0]]))
    print(f"  c/a  (rllib-mlflow / no callback)      = {ours / none:.3f} (rounds: {rounds_ca})")
    if "any_callback" in median:
        anyone = median["any_callback"]
        print(f"  a'/a (any callback / no callback)      = {anyone / none:.3f}")
        print(f"  c/a' (rllib-mlflow / any callback)     = {ours / anyone:.3f}")
    if "ray_logger" in median:
        print(f"  c/b  (rllib-mlflow / Ray MLflowLogger) = {ours / median['ray_logger']:.3f}")
    lags = sorted(lag for r in results["rllib_mlflow"] for lag in r["lags"])
    print(
        f"  lag queued -> registered: p50 {_percentile(lags, 50):.2f} s, "
        f"p95 {_percentile(lags, 95):.2f} s ({len(lags)} checkpoints)"
    )
    after = ", ".join(
        f"{v} {statistics.median(r['tail'] for r in rs):.2f} s" for v, rs in results.items()
    )
    print(f"  fit() after the last checkpoint was stored (median): {after}\n")
    return ours - none


def _percentile(values: list[float], percent: float) -> float:
    return values[min(len(values) - 1, round(percent / 100 * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, nargs="+", default=[8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only-ac", action="store_true", help="run only (a) and (c), to iterate faster"
    )
    args = parser.parse_args()
    variants = ("no_callback", "rllib_mlflow") if args.only_ac else VARIANTS
    extra = {n: measure(n, args.rounds, variants) for n in args.iterations}
    if len(extra) >= 2:
        (short, a), (long, b) = sorted(extra.items())[0], sorted(extra.items())[-1]
        per_checkpoint = (b - a) / (long - short)
        print(
            f"extra wall time c - a: {a:.2f} s at {short}, {b:.2f} s at {long} iterations: "
            f"fixed {a - short * per_checkpoint:.2f} s + {per_checkpoint:.3f} s per checkpoint"
        )


if __name__ == "__main__":
    main()
