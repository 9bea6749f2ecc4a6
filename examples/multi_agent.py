"""A two-policy multi-agent PPO run; each module registers as its own model.

    python examples/multi_agent.py [--iterations 3]

Module `p0` registers as `two-cartpoles-p0`, module `p1` as `two-cartpoles-p1`.
"""

import argparse

import gymnasium as gym
import ray
from ray import tune
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.rllib.env.multi_agent_env import make_multi_agent

from rllib_mlflow import MLflowCheckpointCallback, load_policy

TwoCartPoles = make_multi_agent("CartPole-v1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    tune.register_env("two-cartpoles", lambda cfg: TwoCartPoles({"num_agents": 2}))
    config = (
        PPOConfig()
        .environment("two-cartpoles")
        .env_runners(num_env_runners=0)
        .multi_agent(
            policies={"p0", "p1"},
            policy_mapping_fn=lambda agent_id, episode, **kw: f"p{agent_id}",
        )
        .training(train_batch_size_per_learner=1000, minibatch_size=250, num_epochs=4)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[32, 32]))
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    tune.Tuner(
        "PPO",
        param_space=config,
        run_config=tune.RunConfig(
            name="two-cartpoles",
            stop={"training_iteration": args.iterations},
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1),
            callbacks=[MLflowCheckpointCallback("two-cartpoles", tracking_uri=args.tracking_uri)],
        ),
    ).fit()
    ray.shutdown()
    observation = gym.make("CartPole-v1").reset(seed=0)[0]
    for module_id in ("p0", "p1"):
        uri = f"models:/two-cartpoles-{module_id}@best"
        policy = load_policy(uri, tracking_uri=args.tracking_uri)
        print(module_id, policy.compute_actions([observation]))


if __name__ == "__main__":
    main()
