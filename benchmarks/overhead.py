"""Wall-time overhead of MLflowCheckpointCallback on a Tune run, side by side.

    python benchmarks/overhead.py [--iterations 10] [--rounds 3]

The same seeded PPO CartPole training, a checkpoint every iteration, runs (a) with no
callback, (b) with Ray's own MLflowLoggerCallback, (c) with rllib-mlflow's
MLflowCheckpointCallback, alternating a, b, c per round so that machine drift hits all
three alike. Each run is a fresh process (Ray start-up excluded from the timing: the
clock covers `Tuner.fit()` only, which for (c) includes the final flush, i.e. waiting
until every checkpoint is registered; afterwards the run checks that there is one version
per iteration). Prints the median wall times and the ratios
c/a and c/b. Target: c/a <= 1.05.
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
    import json, os, sys, time
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import tune
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    variant, iterations, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    uri = f"sqlite:///{workdir}/mlflow.db"
    callbacks = []
    if variant == "ray_logger":
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
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner("PPO", param_space=config, run_config=tune.RunConfig(
        name=variant, storage_path=f"{workdir}/results", verbose=0, callbacks=callbacks,
        stop={"training_iteration": iterations},
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1)))
    start = time.perf_counter()
    tuner.fit()
    elapsed = time.perf_counter() - start
    versions = None
    if variant == "rllib_mlflow":  # outside the clock: was every checkpoint registered?
        from mlflow import MlflowClient
        versions = len(MlflowClient(uri).search_model_versions("name = 'overhead'"))
    print("RESULT " + json.dumps({"variant": variant, "seconds": elapsed, "versions": versions}))
    """
)
VARIANTS = ("no_callback", "ray_logger", "rllib_mlflow")


def run_once(variant: str, iterations: int) -> float:
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
            return result["seconds"]
    raise RuntimeError(f"{variant} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_number in range(1, args.rounds + 1):
        for variant in VARIANTS:
            seconds = run_once(variant, args.iterations)
            times[variant].append(seconds)
            print(f"round {round_number}: {variant:<13} {seconds:7.2f} s", flush=True)
    median = {v: statistics.median(t) for v, t in times.items()}
    print(f"\n{args.iterations} iterations, a checkpoint each, median of {args.rounds} rounds:")
    for variant in VARIANTS:
        print(f"  {variant:<13} {median[variant]:7.2f} s")
    ours = median["rllib_mlflow"]
    print(f"  c/a (rllib-mlflow / no callback)      = {ours / median['no_callback']:.3f}")
    print(f"  c/b (rllib-mlflow / Ray MLflowLogger) = {ours / median['ray_logger']:.3f}")


if __name__ == "__main__":
    main()
