"""SAC on Pendulum under Tune; every checkpoint registered as a version of `pendulum-sac`.

    python examples/sac_pendulum.py [--iterations 5]

The exports include RLlib's action post-processing: the continuous action is unsquashed
to Pendulum's [-2, 2] torque bounds exactly as RLlib does before stepping the env.
"""

import argparse

import ray
from ray import tune
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

from rllib_mlflow import MLflowCheckpointCallback, load_policy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    config = (
        SACConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=0)
        .training(num_steps_sampled_before_learning_starts=256, train_batch_size_per_learner=64)
        .reporting(min_sample_timesteps_per_iteration=500)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64]))
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    tune.Tuner(
        "SAC",
        param_space=config,
        run_config=tune.RunConfig(
            name="pendulum-sac",
            stop={"training_iteration": args.iterations},
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1),
            callbacks=[MLflowCheckpointCallback("pendulum-sac", tracking_uri=args.tracking_uri)],
        ),
    ).fit()
    ray.shutdown()
    policy = load_policy("models:/pendulum-sac@best", tracking_uri=args.tracking_uri)
    print("torque for a hanging pendulum:", policy.compute_actions([[1.0, 0.0, 0.0]]))


if __name__ == "__main__":
    main()
