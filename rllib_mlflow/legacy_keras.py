"""Keras 2 (tf_keras) as `tf.keras`, which RLlib's old-API-stack TensorFlow policies need.

RLlib's old-stack TF models are built with `tf.keras`; with Keras 3 behind it their build
fails (`learning_rate should be float ... Received tf.Variable`). TensorFlow routes
`tf.keras` to tf_keras when TF_USE_LEGACY_KERAS=1 is set before its first use of
`tf.keras`, so the processes rllib-mlflow starts (export workers, the command) set it first
thing. The Keras 3 that the new stack's exports use (`import keras`) is not affected by it.
A user's own process decides for itself: `require_legacy_keras` says what to set there.
"""

from __future__ import annotations

import os

from rllib_mlflow.errors import UnsupportedModuleError

VARIABLE = "TF_USE_LEGACY_KERAS"
ENVIRONMENT = {VARIABLE: "1"}

HOW_TO_SET = (
    f"set {VARIABLE}=1 in the environment before TensorFlow is imported (e.g. "
    f"`{VARIABLE}=1 python train.py`, or os.environ[{VARIABLE!r}] = '1' first thing in the "
    "script), with tf_keras installed (`pip install --no-deps -r requirements-convert.txt`)"
)


def use_legacy_keras() -> None:
    """In a process of ours, before TensorFlow loads: `tf.keras` is tf_keras there."""
    os.environ.update(ENVIRONMENT)


def legacy_keras_problem() -> str | None:
    """Why RLlib's old-stack TF policies cannot be built in this process, or None. Resolves
    `tf.keras` (importing TensorFlow) as TensorFlow would on its first use."""
    try:
        import tf_keras  # noqa: F401
    except ImportError:
        return f"tf_keras is not installed: {HOW_TO_SET}"
    import tensorflow as tf

    if not tf.keras.layers.Layer.__module__.startswith("tf_keras"):
        return f"this process's tf.keras is Keras 3: {HOW_TO_SET}"
    return None


def require_legacy_keras(what: str) -> None:
    """Raise one line that says what to set, unless `what` (an old-stack TF policy) can be
    built in this process."""
    problem = legacy_keras_problem()
    if problem:
        raise UnsupportedModuleError(
            f"{what} is an RLlib old-API-stack TensorFlow policy, and {problem}."
        )
