"""Train PPO on CartPole under Ray Tune and register every checkpoint in MLflow.

    python examples/cartpole_ppo.py [--iterations 10] [--tracking-uri URI]

Each checkpoint (one per iteration) is exported to TF SavedModel, Keras .h5 and ONNX,
checked against RLlib, logged as a LoggedModel of the trial's run at its training
iteration, and registered as a version of `cartpole-ppo` (the alias `best` on the best;
`models:/cartpole-ppo@iter-N` loads iteration N), with a model card and a replay of one
episode. Without --tracking-uri (and
MLFLOW_TRACKING_URI) everything goes to MLflow's embedded default store, ./mlflow.db.

The output is one line per training iteration and rllib-mlflow's messages: Tune's tables
and Ray's, TensorFlow's and gymnasium's notices are turned off (see `quiet_third_party`).
"""

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

import ray
from ray import tune
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

from rllib_mlflow import MLflowCheckpointCallback

MODEL_NAME = "cartpole-ppo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--storage", default=os.path.abspath("ray_results"))
    args = parser.parse_args()

    config = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=1)
        .training(train_batch_size_per_learner=2000, minibatch_size=250, num_epochs=6, lr=3e-4)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64]))
        .debugging(seed=0)
    )
    quiet_third_party()
    # Ray's workers' output is not forwarded: a failed trial is still reported below. A new
    # local instance even where `ray start` left a cluster running (ray.init() would join it).
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    callback = MLflowCheckpointCallback(MODEL_NAME, tracking_uri=args.tracking_uri, video=True)
    tuner = tune.Tuner(
        "PPO",
        param_space=config,
        run_config=tune.RunConfig(
            name="cartpole-ppo",
            storage_path=args.storage,
            stop={"training_iteration": args.iterations},
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=3),
            callbacks=[ProgressLine(args.iterations), callback],
            verbose=0,
        ),
    )
    results = tuner.fit()
    ray.shutdown()
    if results.errors:
        raise SystemExit(f"Training failed: {results.errors}")
    print_next_steps(args.tracking_uri)


class ProgressLine(tune.Callback):
    """One line per training iteration, instead of Tune's tables."""

    def __init__(self, iterations: int):
        self.iterations = iterations

    def on_trial_result(self, iteration, trials, trial, result, **info):
        runners = result.get("env_runners", {})
        print(
            f"iteration {result['training_iteration']}/{self.iterations}: episode return "
            f"{runners.get('episode_return_mean', float('nan')):.1f}, "
            f"{int(runners.get('num_env_steps_sampled_lifetime', 0)):,} env steps, "
            f"{result['time_total_s']:.0f} s",
            flush=True,
        )


def quiet_third_party() -> None:
    """Python warnings (gymnasium's, Ray's deprecations) and RLlib's notices, off."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # for Ray's worker processes too
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TensorFlow's notice at import
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's new output prints even at verbose=0
    for name in ("ray.rllib", "ray.tune", "ray._common.deprecation"):
        logging.getLogger(name).setLevel(logging.ERROR)


def print_next_steps(tracking_uri: str | None) -> None:
    """Where the versions are, and commands that run as printed from a fresh shell: absolute
    paths, and this environment's executables (the venv need not be activated)."""
    import mlflow

    from rllib_mlflow import load_policy
    from rllib_mlflow.mlflow.versions import find_version

    uri = tracking_uri or mlflow.get_tracking_uri()  # sqlite:////abs/path/mlflow.db
    best = find_version(f"models:/{MODEL_NAME}@best", tracking_uri=uri)
    policy = load_policy(f"models:/{MODEL_NAME}@best", tracking_uri=uri)
    bin_dir = Path(sys.prefix) / "bin"
    store = f"MLFLOW_TRACKING_URI={shlex.quote(uri)}"
    iteration = best.tags["training_iteration"]
    load = (
        f"p = rllib_mlflow.load_policy('{MODEL_NAME}', training_iteration={iteration}); "
        "print(p.compute_actions([[0.0, 0.0, 0.0, 0.0]]))"
    )
    print(f"""
Every checkpoint is now a registered version of '{MODEL_NAME}' in {uri}, with its model \
card and replay; @best is version {best.version} (training_iteration {iteration}, episode \
return {best.tags.get("episode_return_mean", "?")}). Its action for a resting pole: \
{policy.compute_actions([[0.0, 0.0, 0.0, 0.0]])[0]}.

Browse the versions, their cards and replays, the runs and the Models tab (then open \
http://127.0.0.1:5000/#/models/{MODEL_NAME}):
    {bin_dir}/mlflow ui --backend-store-uri {shlex.quote(uri)} --port 5000
Compare the versions:
    {store} {bin_dir}/rllib-mlflow versions {MODEL_NAME}
Serve the best checkpoint (no Ray needed):
    PATH={bin_dir}:$PATH {store} mlflow models serve -m models:/{MODEL_NAME}@best \\
        --env-manager local -p 5001
Load the policy of a given training iteration in Python (neither Ray nor torch imported):
    {store} {bin_dir}/python -c "import rllib_mlflow; {load}"
""")


if __name__ == "__main__":
    main()
