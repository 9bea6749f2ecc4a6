"""Run an exported policy with numpy and one inference backend: ONNX Runtime or TensorFlow.

This module is shipped inside every logged model (as `rllib_mlflow_serving.py`) and is
MLflow's pyfunc loader for it, so it must import nothing from Ray, torch or the rest of
rllib-mlflow: a served model then needs only mlflow, numpy and one backend.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

POLICY_FILE = "policy.json"
ONNX_FILE = "model.onnx"
SAVED_MODEL_DIR = "saved_model"
BACKENDS = ("onnxruntime", "tensorflow")


class Policy:
    """A trained policy loaded from an export directory: observations in, actions out."""

    def __init__(self, export_dir: str, backend: str | None = None):
        with open(os.path.join(export_dir, POLICY_FILE)) as stream:
            self.metadata: dict[str, Any] = json.load(stream)
        self.backend = backend or _default_backend(export_dir)
        self._rule = self.metadata["action_rule"]
        self._input_shape = tuple(self.metadata["input"]["shape"][1:])
        self._run = _load_backend(self.backend, export_dir)

    def compute_actions(
        self, observations: Any, explore: bool = False, seed: int | None = None
    ) -> np.ndarray:
        """Actions for a batch of raw observations; `explore` samples instead of argmax."""
        actions, dist_inputs = self._run(self._batch(observations))
        if explore:
            return sample_actions(dist_inputs, self._rule, np.random.default_rng(seed))
        return actions

    def action_dist_inputs(self, observations: Any) -> np.ndarray:
        """The module's action distribution inputs (logits, or mean and log std)."""
        return self._run(self._batch(observations))[1]

    def _batch(self, observations: Any) -> np.ndarray:
        batch = np.asarray(observations, dtype=np.float32)
        if batch.shape == self._input_shape:
            batch = batch[None]
        if batch.shape[1:] != self._input_shape or batch.shape[0] == 0:
            raise ValueError(
                f"Expected a non-empty batch of observations of shape {list(self._input_shape)}"
                f" (batch shape [N, {', '.join(map(str, self._input_shape))}]), got "
                f"{list(batch.shape)}."
            )
        if not np.all(np.isfinite(batch)):
            raise ValueError("Observations contain NaN or infinite values.")
        return batch


def deterministic_actions(dist_inputs: np.ndarray, rule: dict[str, Any]) -> np.ndarray:
    """RLlib's action for explore=False, computed from action_dist_inputs with numpy."""
    kind, lens = rule["distribution"], rule["input_lens"]
    if kind == "categorical":
        return np.argmax(dist_inputs, axis=-1)
    if kind == "multi_categorical":
        parts = np.split(dist_inputs, np.cumsum(lens)[:-1], axis=-1)
        return np.stack([np.argmax(p, axis=-1) for p in parts], axis=-1)
    # Gaussians, squashed ones included: RLlib 2.60 acts with the (pre-tanh) mean.
    actions = dist_inputs[:, : lens[0]]
    return _postprocess(actions.astype(np.float32), rule)


def sample_actions(
    dist_inputs: np.ndarray, rule: dict[str, Any], rng: np.random.Generator
) -> np.ndarray:
    """RLlib's action for explore=True: a sample of the action distribution."""
    kind, lens = rule["distribution"], rule["input_lens"]
    if kind in ("categorical", "multi_categorical"):
        parts = np.split(dist_inputs, np.cumsum(lens)[:-1], axis=-1)
        picks = np.stack([_sample_categorical(p, rng) for p in parts], axis=-1)
        return picks[:, 0] if kind == "categorical" else picks
    mean, log_std = dist_inputs[:, : lens[0]], dist_inputs[:, lens[0] :]
    if kind == "squashed_gaussian":
        log_std = np.clip(log_std, -5.0, 2.0)  # RLlib's MIN/MAX_LOG_NN_OUTPUT
    sample = mean + np.exp(log_std) * rng.standard_normal(mean.shape)
    if kind == "squashed_gaussian":
        sample = np.clip(np.tanh(sample), -1.0, 1.0)
    return _postprocess(sample.astype(np.float32), rule)


def _sample_categorical(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Gumbel-max: argmax(logits + Gumbel noise) is a sample of softmax(logits).
    return np.argmax(logits - np.log(-np.log(rng.uniform(size=logits.shape))), axis=-1)


def _postprocess(actions: np.ndarray, rule: dict[str, Any]) -> np.ndarray:
    """RLlib's NormalizeAndClipActions: unsquash [-1, 1] to the bounds, or clip to them."""
    if not (rule["normalize_actions"] or rule["clip_actions"]):
        return actions
    low = np.asarray(rule["low"], dtype=np.float32)
    high = np.asarray(rule["high"], dtype=np.float32)
    if rule["normalize_actions"]:
        actions = low + (actions + 1.0) * (high - low) / 2.0
    return np.clip(actions, low, high)


def onnxruntime_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _default_backend(export_dir: str) -> str:
    if os.path.exists(os.path.join(export_dir, ONNX_FILE)) and onnxruntime_installed():
        return "onnxruntime"
    if os.path.isdir(os.path.join(export_dir, SAVED_MODEL_DIR)):
        return "tensorflow"
    raise RuntimeError(
        f"No usable model in {export_dir}: install onnxruntime (for {ONNX_FILE}) or "
        f"tensorflow (for {SAVED_MODEL_DIR}/)."
    )


def _load_backend(backend: str, export_dir: str):
    """A function: observation batch -> (actions, action_dist_inputs)."""
    if backend == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            os.path.join(export_dir, ONNX_FILE), providers=["CPUExecutionProvider"]
        )
        return lambda batch: tuple(
            session.run(["actions", "action_dist_inputs"], {"observations": batch})
        )
    if backend == "tensorflow":
        import tensorflow as tf

        serve = tf.saved_model.load(os.path.join(export_dir, SAVED_MODEL_DIR)).signatures[
            "serving_default"
        ]

        def run(batch):
            out = serve(observations=tf.constant(batch))
            return out["actions"].numpy(), out["action_dist_inputs"].numpy()

        return run
    raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}.")


# -- MLflow pyfunc ------------------------------------------------------------------------


class _PyfuncPolicy:
    """What `mlflow.pyfunc.load_model` returns for an rllib-mlflow model."""

    def __init__(self, export_dir: str):
        self.policy = Policy(export_dir)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None):
        params = params or {}
        observations = _observations(model_input)
        try:
            batch = self.policy._batch(observations)
        except ValueError as error:
            _raise_invalid_input(str(error))
        actions = self.policy.compute_actions(
            batch, explore=bool(params.get("explore", False)), seed=params.get("seed")
        )
        if params.get("return_dist_inputs"):
            return {"actions": actions, "action_dist_inputs": self.policy.action_dist_inputs(batch)}
        return actions


def _observations(model_input: Any) -> np.ndarray:
    if hasattr(model_input, "to_numpy"):  # a pandas DataFrame: one row per observation
        model_input = model_input.to_numpy()
    if isinstance(model_input, dict):
        if len(model_input) != 1:
            _raise_invalid_input("Send one tensor of observations (input name 'observations').")
        model_input = next(iter(model_input.values()))
    try:
        return np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError) as error:
        _raise_invalid_input(f"Observations must be numbers: {error}")


def _raise_invalid_input(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _load_pyfunc(path: str) -> _PyfuncPolicy:
    """MLflow's pyfunc entry point: `path` is the model's data directory."""
    return _PyfuncPolicy(path)
