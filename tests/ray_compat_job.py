"""One function-trainable sweep logged by Ray's `MLflowLoggerCallback` and by ours at once.

    python tests/ray_compat_job.py TRACKING_URI STORAGE SCENARIO

SCENARIO: `named` (each callback gets an experiment_name), `env` (neither does: the
MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID in the environment decide).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def trainable(config):
    from ray import tune

    for i in range(3):
        tune.report(
            {
                "score": config["a"] * i,
                "nested": {"loss": 1.0 / (i + 1)},
                "even": i % 2 == 0,
                "label": "not a number",
            }
        )


def main() -> None:
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback as RaysCallback

    from rllib_mlflow import MLflowLoggerCallback

    uri, storage, scenario = sys.argv[1:4]
    named = scenario == "named"
    tags = {"team": "rl"}
    callbacks = [
        RaysCallback(uri, experiment_name="rays" if named else None, tags=tags),
        MLflowLoggerCallback(uri, experiment_name="ours" if named else None, tags=tags),
    ]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    tune.Tuner(
        trainable,
        param_space={
            "a": tune.grid_search([1, 2]),
            "optimizer": {"lr": 0.1, "betas": [0.9, 0.99]},
            "name": "sweep",
        },
        run_config=tune.RunConfig(
            name="compat", storage_path=storage, callbacks=callbacks, verbose=0
        ),
    ).fit()
    ray.shutdown()


if __name__ == "__main__":
    main()
