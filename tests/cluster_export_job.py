"""A Tune sweep on a two-node Ray cluster on this machine, exporting with
`export_on="cluster"`, for `tests/test_cluster_export.py`.

    python -m tests.cluster_export_job --storage DIR --tracking-uri URI --output JSON

A `ray.cluster_utils.Cluster` needs a Ray of its own, so this runs in a subprocess (the test
session has one already). Writes the trial ids, both nodes' ids and, from the dispatcher's
debug log, the node that registered each checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ONE_FORMAT = {"formats": ["onnx"]}  # what is proved here is where and in which order
_DONE_ON_NODE = re.compile(r"^(?P<key>\S+/\d+) done on node (?P<node>\w+)$")


class ExportNodes(logging.Handler):
    """Collects the dispatcher's "<key> done on node <id>" debug records: task key -> node."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_key: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = _DONE_ON_NODE.match(record.getMessage())
        if match:
            self.by_key[match["key"]] = match["node"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from tests import tune_job

    workers = 2
    nodes = ExportNodes()
    dispatcher_logger = logging.getLogger("rllib_mlflow.tune.dispatcher")
    dispatcher_logger.setLevel(logging.DEBUG)
    dispatcher_logger.addHandler(nodes)

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
    )
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        results = tune_job.run(
            args.storage,
            args.tracking_uri,
            args.iterations,
            learning_rates=[1e-3 / (index + 1) for index in range(args.trials)],
            callback_kwargs={"export_on": "cluster", "export_workers": workers, **ONE_FORMAT},
        )
        summary = {
            "errors": [str(error) for error in results.errors],
            "trial_ids": sorted(result.metrics["trial_id"] for result in results),
            "head_node_id": cluster.head_node.node_id,
            "worker_node_id": worker.node_id,
            "nodes": len(ray.nodes()),
            "export_nodes": nodes.by_key,
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    with open(args.output, "w") as file:
        json.dump(summary, file)


if __name__ == "__main__":
    main()
