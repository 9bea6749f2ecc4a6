"""Without Tune: a plain `algo.train()` / `algo.save()` loop, each checkpoint registered.

python examples/plain_loop.py [--iterations 5]
"""

import argparse
import tempfile

import mlflow
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

from rllib_mlflow import log_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    algo = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[32, 32]))
        .build_algo()
    )
    checkpoints = tempfile.mkdtemp(prefix="plain_loop_")
    with mlflow.start_run(run_name="plain-loop"):  # log_checkpoint logs into the active run
        for _ in range(args.iterations):
            result = algo.train()
            iteration = result["training_iteration"]
            saved = algo.save(f"{checkpoints}/checkpoint_{iteration:06d}")
            versions = log_checkpoint(saved.checkpoint, "cartpole-plain", metrics=result)
            print(f"iteration {iteration}: version {versions[0].version}")
    algo.stop()


if __name__ == "__main__":
    main()
