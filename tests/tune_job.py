"""A small Tune job with the checkpoint callback, runnable in-process or as a script.

    python -m tests.tune_job --storage DIR --tracking-uri URI [--iterations N] [--restore]
        [--best-metric NAME] [--formats LIST]

Tests run it in a subprocess to interrupt it with SIGINT and to restore it.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

EXPERIMENT = "tune-job"
MODEL_NAME = "tune-job-ppo"
# Secrets a user's config may hold, nested in lists and URLs: none may reach MLflow.
CONFIG_SECRETS = {
    "api_token": "hunter2-secret",
    "nested in a list": "nested-key-7f3e1a",
    "creds": "creds-value-52c9d0",
    "URL password": "url-password-0b8e44",
}


def ppo_config(
    learning_rates=(1e-3, 3e-4), secret: str = "hunter2-secret", seconds_per_iteration: float = 0
):
    from ray import tune
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0)
        .learners(
            learner_config_dict={
                "api_token": secret,
                "level": 1,
                "services": [{"name": "db", "api_key": CONFIG_SECRETS["nested in a list"]}],
                "my_creds": CONFIG_SECRETS["creds"],
                "db_url": f"postgresql://rl:{CONFIG_SECRETS['URL password']}@db.internal/rl",
            }
        )
        .training(
            train_batch_size_per_learner=200,
            minibatch_size=100,
            num_epochs=1,
            lr=tune.grid_search(list(learning_rates)),
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[16, 16]))
        .reporting(
            min_time_s_per_iteration=seconds_per_iteration, metrics_num_episodes_for_smoothing=5
        )
        .debugging(seed=0, log_level="ERROR")
    )


class StopAfterSignal:
    """Tune stopper: a trial stops `after` iterations past the moment `signal_file` exists,
    or at `iterations`. Lets a test keep training going until an outage it caused is over,
    however long the outage takes on a loaded machine."""

    def __init__(self, signal_file: str, iterations: int, after: int = 3):
        self.signal_file, self.iterations, self.after = signal_file, iterations, after
        self.last: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        iteration = result["training_iteration"]
        if trial_id not in self.last and os.path.exists(self.signal_file):
            self.last[trial_id] = iteration + self.after
        return iteration >= min(self.iterations, self.last.get(trial_id, self.iterations))


def run(
    storage: str,
    tracking_uri: str,
    iterations: int = 3,
    *,
    restore: bool = False,
    num_to_keep: int | None = 1,
    learning_rates=(1e-3, 3e-4),
    seconds_per_iteration: float = 0,
    callback_kwargs: dict | None = None,
    with_callback: bool = True,
    stop_file: str | None = None,
):
    from ray import tune

    from rllib_mlflow import MLflowCheckpointCallback

    callback = MLflowCheckpointCallback(
        MODEL_NAME, tracking_uri=tracking_uri, **(callback_kwargs or {})
    )
    run_config = tune.RunConfig(
        name=EXPERIMENT,
        storage_path=storage,
        stop=StopAfterSignal(stop_file, iterations)
        if stop_file
        else {"training_iteration": iterations},
        callbacks=[callback] if with_callback else [],
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=num_to_keep),
        verbose=0,
    )
    config = ppo_config(learning_rates, seconds_per_iteration=seconds_per_iteration)
    if restore:
        tuner = tune.Tuner.restore(
            os.path.join(storage, EXPERIMENT),
            "PPO",
            resume_unfinished=True,
            param_space=config,
        )
    else:
        tuner = tune.Tuner("PPO", param_space=config, run_config=run_config)
    return tuner.fit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--restore", action="store_true")
    parser.add_argument("--seconds-per-iteration", type=float, default=1.0)
    parser.add_argument("--best-metric", help="the callback's best_metric (default: its own)")
    parser.add_argument(
        "--formats", help="the callback's formats, comma-separated (default: its own)"
    )
    args = parser.parse_args()
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = run(
        args.storage,
        args.tracking_uri,
        args.iterations,
        restore=args.restore,
        num_to_keep=None,
        seconds_per_iteration=args.seconds_per_iteration,
        callback_kwargs={
            **({"best_metric": args.best_metric} if args.best_metric else {}),
            **({"formats": args.formats.split(",")} if args.formats else {}),
        },
    )
    ray.shutdown()
    if results.errors:
        raise SystemExit(f"trials failed: {results.errors}")


if __name__ == "__main__":
    main()
