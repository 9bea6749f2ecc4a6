"""policy.json: everything a consumer needs to use the exports without RLlib.

Spaces, the graphs' named inputs and outputs, the state and history a stateful policy
carries, preprocessing, the action rule, how each format was made (and why a requested one
was not), the training run's metadata, library versions and the parity report.
"""

from __future__ import annotations

import platform
from typing import Any

from rllib_mlflow.policy.flatten import RULE as FLATTEN_RULE
from rllib_mlflow.policy.serving import ONNX_FILE, SAVED_MODEL_DIR, TFLITE_FILE, TFLITE_INT8_FILE
from rllib_mlflow.rllib.snapshot import PolicySnapshot

# Named where the files are read: `rllib_mlflow.policy`, which a served model ships alone.
FORMAT_FILES = {
    "saved_model": SAVED_MODEL_DIR,
    "h5": "model.h5",
    "onnx": ONNX_FILE,
    "tflite": TFLITE_FILE,
    "tflite_int8": TFLITE_INT8_FILE,
}
POLICY_FORMAT_VERSION = 1


def policy_json(
    snapshot: PolicySnapshot,
    formats: tuple[str, ...],
    parity: dict[str, Any] | None,
    refused: dict[str, str] | None = None,
    quantized: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a consumer needs to use the exports without RLlib; `quantized` holds, per
    quantized format, its calibration data and its agreement with RLlib."""
    rule = snapshot.action_rule
    policy = {
        "format_version": POLICY_FORMAT_VERSION,
        "module_id": snapshot.module_id,
        "algorithm": snapshot.algorithm,
        "env_id": snapshot.env_id,
        "env": snapshot.env,  # how to make it again: rllib_mlflow.rllib.env_record
        "source_checkpoint": snapshot.source_checkpoint,
        "written_by_ray": snapshot.written_by_ray,
        "training_iteration": snapshot.training_iteration,
        "metrics": snapshot.metrics,
        "observation_space": snapshot.observation_space,
        "action_space": snapshot.action_space,
        "input": _input_json(snapshot),
        "preprocessing": snapshot.preprocessing_json(),
        "action_rule": rule.to_json(),
        "outputs": {
            "actions": "the action the environment receives from RLlib with explore=False",
            "action_dist_inputs": f"inputs of the {rule.distribution} distribution",
        },
        "files": {fmt: FORMAT_FILES[fmt] for fmt in formats},
        "formats": list(formats),
        "refused_formats": dict(refused or {}),
        "how": {fmt: _how(snapshot, fmt) for fmt in formats},
        "module_class": snapshot.module_class,
        "model_config": snapshot.model_config,
        "library_versions": library_versions(),
        "parity": parity,
        "quantized": {fmt: q for fmt, q in (quantized or {}).items() if fmt in formats},
    }
    policy.update(_graph_json(snapshot))
    if snapshot.mean_std_filter is not None:
        policy["filter"] = {
            "type": "mean_std_filter",
            "frozen_at_checkpoint": True,
            "note": (
                "RLlib keeps updating a MeanStdFilter's running mean and std while its "
                "EnvRunners act, even with explore=False; the exports use the statistics "
                "saved in the checkpoint, unchanged."
            ),
        }
    return policy


def _input_json(snapshot: PolicySnapshot) -> dict[str, Any]:
    """The observation input(s) of the graphs; `inputs` lists every input with its shape."""
    if snapshot.observation_inputs is not None:
        return {
            "names": list(snapshot.observation_inputs),
            "dtype": "float32",
            "description": "one input per key of the Dict observation, as float32",
        }
    return {
        "name": "observations",
        "dtype": "float32",
        "shape": [None, *snapshot.input_shape],
        "description": (
            f"the observation flattened by {FLATTEN_RULE}"
            if snapshot.flatten_observations
            else "the raw observation as the environment returns it, as float32"
        ),
    }


def observation_metadata(snapshot: PolicySnapshot) -> dict[str, Any]:
    """What policy.json tells `ObservationConverter` about the observations (the parity
    check feeds the exports through it before policy.json is written)."""
    return {"observation_space": snapshot.observation_space, **_graph_json(snapshot)}


def _graph_json(snapshot: PolicySnapshot) -> dict[str, Any]:
    """The exported graphs' named inputs and outputs, and how to carry a policy's state."""
    graph: dict[str, Any] = {
        "inputs": [
            {"name": name, "dtype": "float32", "shape": [None, *shape]}
            for name, shape in snapshot.graph_inputs()
        ],
        "output_names": snapshot.graph_outputs(),
        "stateful": snapshot.is_stateful,
        "state": [s.to_json() for s in snapshot.state],
        "history": [h.to_json() for h in snapshot.history()],
    }
    if snapshot.observation_inputs is not None:
        graph["observation_keys"] = list(snapshot.observation_inputs)
    if snapshot.custom_distribution is not None:
        graph["custom_distribution"] = snapshot.custom_distribution
    return graph


def _how(snapshot: PolicySnapshot, fmt: str) -> str:
    if fmt == "tflite":
        return "converted from the SavedModel by tf.lite.TFLiteConverter (float32)"
    if fmt == "tflite_int8":
        return (
            "converted from the SavedModel by tf.lite.TFLiteConverter with full-integer "
            "post-training quantization (int8 kernels; float32 inputs and outputs)"
        )
    if fmt == "onnx" and snapshot.custom_distribution is not None:
        return "torch.onnx.export of the module and its distribution's deterministic sample"
    if fmt == "onnx":
        return "torch.onnx.export of RLlib's module (traced), with the action rule"
    if snapshot.network is not None:
        return "rebuilt in Keras from standard layers, with the checkpoint's weights"
    if fmt == "saved_model":
        return "converted from model.onnx by onnx2tf"
    return "converted by onnx2tf from the ONNX network (inputs -> action_dist_inputs); tf_keras"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    # TensorFlow is installed as "tensorflow" or "tensorflow-cpu"; report either as tensorflow.
    packages = {
        "rllib-mlflow": ("rllib-mlflow",),
        "ray": ("ray",),
        "torch": ("torch",),
        "tensorflow": ("tensorflow", "tensorflow-cpu"),
        "keras": ("keras",),
        "onnx": ("onnx",),
        "mlflow": ("mlflow",),
    }
    for name, distributions in packages.items():
        for distribution in distributions:
            try:
                versions[name] = version(distribution)
                break
            except PackageNotFoundError:
                continue
    return versions
