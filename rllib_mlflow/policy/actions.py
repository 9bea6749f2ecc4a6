"""RLlib's actions from the module's action distribution inputs, with numpy alone.

Deterministic actions (explore=False) are baked into every export; sampling (explore=True)
and the exports that only give distribution inputs (Keras .h5) need the same rule here.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def deterministic_actions(dist_inputs: np.ndarray, rule: dict[str, Any]) -> np.ndarray:
    """RLlib's action for explore=False, computed from action_dist_inputs with numpy."""
    kind, lens = rule["distribution"], rule["input_lens"]
    if kind == "categorical":
        return np.argmax(dist_inputs, axis=-1)
    if kind == "multi_categorical":
        parts = np.split(dist_inputs, np.cumsum(lens)[:-1], axis=-1)
        return np.stack([np.argmax(p, axis=-1) for p in parts], axis=-1)
    # Gaussians: the mean; new-stack squashed ones too (RLlib 2.60 acts with the pre-tanh
    # mean), the old stack's SquashedGaussian (SAC) with its tanh.
    actions = dist_inputs[:, : lens[0]]
    if kind == "tanh_squashed_gaussian":
        actions = np.tanh(actions)
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
    if kind == "deterministic":  # TorchDeterministic samples its inputs
        return _postprocess(dist_inputs.astype(np.float32), rule)
    mean, log_std = dist_inputs[:, : lens[0]], dist_inputs[:, lens[0] :]
    squashed = kind in ("squashed_gaussian", "tanh_squashed_gaussian")
    if squashed:
        log_std = np.clip(log_std, -5.0, 2.0)  # RLlib's MIN/MAX_LOG_NN_OUTPUT
    sample = mean + np.exp(log_std) * rng.standard_normal(mean.shape)
    if squashed:
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
