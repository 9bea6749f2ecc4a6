"""A Tune run on a two-node Ray cluster on this machine, for `tests/test_stack_cluster.py`.

    python -m tests.stack_cluster_job OUTPUT_JSON   # reads the stack's addresses from STACK_*

The head node has no `trainer` resource and the second node has one; the trial asks for it,
so it can only run on the second node. Storage is on S3, configured by the environment (as
on a real cluster, where every node reads AWS_* from its own environment). The checkpoint
callback runs on the driver. Writes the trial's node, the nodes and the trial id as JSON.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _record_node(algorithm, metrics_logger=None, result=None, **kwargs) -> None:
    import ray

    result["node_id"] = ray.get_runtime_context().get_node_id()


def main(output: str) -> None:
    import ray
    from ray import tune
    from ray.cluster_utils import Cluster
    from ray.rllib.algorithms.ppo import PPO

    from tests import tune_job
    from tests.stack import run_tune_on_s3

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    worker = cluster.add_node(num_cpus=1, resources={"trainer": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        stack = _Stack()
        config = tune_job.ppo_config(learning_rates=(1e-3,)).callbacks(on_train_result=_record_node)
        trainable = tune.with_resources(PPO, {"cpu": 1, "trainer": 1})
        results = run_tune_on_s3(
            stack,
            os.environ["STACK_TRACKING_URI"],
            os.environ["STACK_EXPERIMENT"],
            iterations=2,
            trainable=trainable,
            storage_filesystem=False,
            config=config,
        )
        result = results[0]
        summary = {
            "errors": [str(e) for e in results.errors],
            "trial_id": result.metrics["trial_id"],
            "trial_node_id": result.metrics.get("node_id"),
            "head_node_id": cluster.head_node.node_id,
            "worker_node_id": worker.node_id,
            "nodes": len(ray.nodes()),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    with open(output, "w") as file:
        json.dump(summary, file)


class _Stack:
    """What `run_tune_on_s3` needs of a `ProductionStack`, from the environment."""

    s3_endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    access_key = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY", "")


if __name__ == "__main__":
    main(sys.argv[1])
