"""Load exported policies with TensorFlow, Keras and ONNX Runtime alone: no Ray, no torch.

Run by tests/test_export.py in a fresh process:

    python tests/_no_ray_loader.py MANIFEST.json RESULTS_DIR

MANIFEST.json is a list of jobs ``{"key": ..., "export_dir": ..., "observations": X.npy}``.
For each job and each format listed in the export's policy.json this script computes actions
and action_dist_inputs for the observations and writes them to RESULTS_DIR/<key>.npz, as
``<format>.actions`` and ``<format>.action_dist_inputs`` (and the same for
``rllib_mlflow.policy.serving.Policy`` with each backend, as ``policy-<backend>.*``).

Importing `ray` or `torch` (or anything below them) raises ImportError here, and the script
fails if either ended up in `sys.modules` anyway.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys

BLOCKED = ("ray", "torch")
blocked_attempts: list[str] = []


class _BlockRayAndTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            blocked_attempts.append(fullname)
            raise ModuleNotFoundError(f"{fullname} is blocked in this process", name=fullname)
        return None


sys.meta_path.insert(0, _BlockRayAndTorch())
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import tensorflow as tf  # noqa: E402


def _import_policy_package(module: str):
    """A module of rllib_mlflow/policy/ imported as the standalone package a logged model
    ships (`code/rllib_mlflow_policy/`), not as part of rllib_mlflow."""
    import importlib
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    package_dir = os.path.join(root, "rllib_mlflow", "policy")
    if "rllib_mlflow_policy" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "rllib_mlflow_policy",
            os.path.join(package_dir, "__init__.py"),
            submodule_search_locations=[package_dir],
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules["rllib_mlflow_policy"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"rllib_mlflow_policy.{module}")


serving = _import_policy_package("serving")
actions = _import_policy_package("actions")


def run_saved_model(export_dir: str, observations: np.ndarray):
    loaded = tf.saved_model.load(os.path.join(export_dir, "saved_model"))
    out = loaded.signatures["serving_default"](observations=tf.constant(observations))
    return out["actions"].numpy(), out["action_dist_inputs"].numpy()


def run_h5(export_dir: str, observations: np.ndarray, rule: dict):
    model = keras.models.load_model(os.path.join(export_dir, "model.h5"), safe_mode=True)
    dist_inputs = np.asarray(model.predict(observations, verbose=0))
    return actions.deterministic_actions(dist_inputs, rule), dist_inputs


def run_onnx(export_dir: str, observations: np.ndarray):
    session = onnxruntime.InferenceSession(
        os.path.join(export_dir, "model.onnx"), providers=["CPUExecutionProvider"]
    )
    actions, dist_inputs = session.run(
        ["actions", "action_dist_inputs"], {"observations": observations}
    )
    return actions, dist_inputs


def run_job(job: dict, results_dir: str) -> list[str]:
    export_dir = job["export_dir"]
    with open(os.path.join(export_dir, "policy.json")) as stream:
        policy = json.load(stream)
    observations = np.load(job["observations"]).astype(np.float32)
    results: dict[str, np.ndarray] = {}
    for fmt in policy["formats"]:
        if fmt == "saved_model":
            actions, dist_inputs = run_saved_model(export_dir, observations)
        elif fmt == "h5":
            actions, dist_inputs = run_h5(export_dir, observations, policy["action_rule"])
        elif fmt == "onnx":
            actions, dist_inputs = run_onnx(export_dir, observations)
        else:
            raise ValueError(f"unknown format {fmt!r}")
        results[f"{fmt}.actions"] = np.asarray(actions)
        results[f"{fmt}.action_dist_inputs"] = np.asarray(dist_inputs)
    backends = {"onnx": "onnxruntime", "saved_model": "tensorflow"}
    for fmt, backend in backends.items():
        if fmt in policy["formats"]:
            policy_obj = serving.Policy(export_dir, backend=backend)
            results[f"policy-{backend}.actions"] = policy_obj.compute_actions(observations)
            results[f"policy-{backend}.action_dist_inputs"] = policy_obj.action_dist_inputs(
                observations
            )
    np.savez(os.path.join(results_dir, f"{job['key']}.npz"), **results)
    return sorted(results)


def main() -> int:
    manifest, results_dir = sys.argv[1], sys.argv[2]
    with open(manifest) as stream:
        jobs = json.load(stream)
    done = {job["key"]: run_job(job, results_dir) for job in jobs}
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, f"ray/torch were imported: {leaked}"
    print(
        json.dumps(
            {"done": done, "blocked_attempts": sorted(set(blocked_attempts)), "leaked": leaked}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
