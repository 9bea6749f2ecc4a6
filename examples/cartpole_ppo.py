"""Train PPO on CartPole under Ray Tune and register every checkpoint in MLflow.

    python examples/cartpole_ppo.py [--iterations 10] [--tracking-uri URI]

Each checkpoint (one per iteration) is exported to TF SavedModel, Keras .h5 and ONNX,
checked against RLlib, logged as a LoggedModel of the trial's run at its training
iteration, and registered as a version of `cartpole-ppo` with the aliases `best` and
`iter-N`. Without --tracking-uri (and MLFLOW_TRACKING_URI) everything goes to MLflow's
embedded default store, ./mlflow.db.
"""

import argparse
import os

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
    ray.init(num_cpus=2, include_dashboard=False)
    tuner = tune.Tuner(
        "PPO",
        param_space=config,
        run_config=tune.RunConfig(
            name="cartpole-ppo",
            storage_path=args.storage,
            stop={"training_iteration": args.iterations},
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=3),
            callbacks=[MLflowCheckpointCallback(MODEL_NAME, tracking_uri=args.tracking_uri)],
            verbose=1,
        ),
    )
    tuner.fit()
    ray.shutdown()
    print_next_steps(args.tracking_uri)


def print_next_steps(tracking_uri: str | None) -> None:
    from rllib_mlflow import load_policy
    from rllib_mlflow.registry import find_version

    uri = tracking_uri or "sqlite:///mlflow.db"
    best = find_version(f"models:/{MODEL_NAME}@best", tracking_uri=tracking_uri)
    policy = load_policy(f"models:/{MODEL_NAME}@best", tracking_uri=tracking_uri)
    print(f"""
Every checkpoint is now a registered version of '{MODEL_NAME}'; @best is version \
{best.version} (training_iteration {best.tags["training_iteration"]}, episode return \
{best.tags.get("episode_return_mean", "?")}). Its action for a resting pole: \
{policy.compute_actions([[0.0, 0.0, 0.0, 0.0]])[0]}.

Browse the versions, runs and the Models tab:
    mlflow ui --backend-store-uri {uri}
Serve the best checkpoint (no Ray needed):
    MLFLOW_TRACKING_URI={uri} mlflow models serve -m models:/{MODEL_NAME}@best \\
        --env-manager local -p 5001
Load the policy of a given training iteration in Python (neither Ray nor torch imported):
    MLFLOW_TRACKING_URI={uri} python -c "import rllib_mlflow; \
p = rllib_mlflow.load_policy('{MODEL_NAME}', training_iteration=3); \
print(p.compute_actions([[0.0, 0.0, 0.0, 0.0]]))"
""")


if __name__ == "__main__":
    main()
