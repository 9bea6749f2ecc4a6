"""Prove that every written export acts like RLlib's own policy.

RLlib's restored torch module, action distribution and connector logic
(`checkpoint.rllib_reference`) and each export, loaded back from disk, receive the same
observations sampled from the observation space. Discrete actions must be identical;
continuous actions and action_dist_inputs must agree within the tolerance.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rllib_mlflow import checkpoint, serving
from rllib_mlflow.errors import ParityError
from rllib_mlflow.snapshot import PolicySnapshot
from rllib_mlflow.spaces import space_from_json

TOLERANCE = 1e-5
DEFAULT_OBSERVATIONS = 1000


def sample_observations(snapshot: PolicySnapshot, count: int, seed: int = 0) -> np.ndarray:
    """`count` raw observations from the snapshot's observation space, as model input."""
    import gymnasium as gym

    space = space_from_json(snapshot.observation_space)
    space.seed(seed)
    samples = [space.sample() for _ in range(count)]
    if snapshot.flatten_observations:
        samples = [gym.spaces.flatten(space, s) for s in samples]
    return np.asarray(samples, dtype=np.float32).reshape(count, *snapshot.input_shape)


def check_parity(
    snapshot: PolicySnapshot,
    export_dir: str,
    formats: list[str],
    observations: int = DEFAULT_OBSERVATIONS,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare each written format with RLlib; raise ParityError beyond tolerance."""
    batch = sample_observations(snapshot, observations, seed)
    want_actions, want_inputs = checkpoint.rllib_reference(snapshot)(batch)
    report: dict[str, Any] = {
        "observations": observations,
        "seed": seed,
        "tolerance": TOLERANCE,
        "reference": "RLlib torch module + inference distribution + connectors",
        "formats": {},
    }
    rule = snapshot.action_rule.to_json()
    for fmt in formats:
        actions, dist_inputs = _run_format(fmt, export_dir, batch, rule)
        report["formats"][fmt] = _compare(
            want_actions, want_inputs, actions, dist_inputs, snapshot.action_rule.is_discrete
        )
    report["max_abs_diff"] = max(
        (r["max_abs_diff"] for r in report["formats"].values()), default=0.0
    )
    report["passed"] = all(r["passed"] for r in report["formats"].values())
    if not report["passed"]:
        failed = {f: r for f, r in report["formats"].items() if not r["passed"]}
        raise ParityError(
            f"Export of module {snapshot.module_id!r} does not match RLlib on {observations} "
            f"observations: {failed}. Nothing was written. Please report this with the "
            "checkpoint's algorithm and model config."
        )
    return report


def _run_format(fmt: str, export_dir: str, batch: np.ndarray, rule: dict):
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            os.path.join(export_dir, "model.onnx"), providers=["CPUExecutionProvider"]
        )
        actions, inputs = session.run(["actions", "action_dist_inputs"], {"observations": batch})
        return actions, inputs
    if fmt == "saved_model":
        import tensorflow as tf

        serve = tf.saved_model.load(os.path.join(export_dir, "saved_model")).signatures[
            "serving_default"
        ]
        out = serve(observations=tf.constant(batch))
        return out["actions"].numpy(), out["action_dist_inputs"].numpy()
    if fmt == "h5":
        import keras

        model = keras.models.load_model(os.path.join(export_dir, "model.h5"), safe_mode=True)
        inputs = np.asarray(model(batch))
        return serving.deterministic_actions(inputs, rule), inputs
    raise ValueError(f"Unknown format {fmt!r}.")


def _compare(want_actions, want_inputs, actions, inputs, discrete: bool) -> dict[str, Any]:
    input_diff = float(np.max(np.abs(want_inputs - inputs))) if want_inputs.size else 0.0
    want = np.asarray(want_actions).reshape(np.shape(actions))
    if discrete:
        mismatches = int(np.sum(np.any(want != actions, axis=tuple(range(1, want.ndim)))))
        action_diff = float(mismatches)
        passed = mismatches == 0 and _close(want_inputs, inputs)
    else:
        mismatches = 0
        action_diff = float(np.max(np.abs(want - actions))) if want.size else 0.0
        passed = _close(want, actions) and _close(want_inputs, inputs)
    return {
        "max_abs_diff": max(input_diff, 0.0 if discrete else action_diff),
        "max_abs_diff_action_dist_inputs": input_diff,
        "max_abs_diff_actions": action_diff if not discrete else 0.0,
        "action_mismatches": mismatches,
        "passed": bool(passed),
    }


def _close(want: np.ndarray, got: np.ndarray) -> bool:
    # Absolute tolerance, relative for magnitudes above 1 (float32 has ~7 digits).
    return bool(np.all(np.abs(want - got) <= TOLERANCE * np.maximum(1.0, np.abs(want))))
