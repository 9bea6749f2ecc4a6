"""Keras 2 (tf_keras) as `tf.keras` in the processes rllib-mlflow starts.

RLlib's old-API-stack TensorFlow policies are built with `tf.keras`; with Keras 3 behind it
their build fails. TensorFlow routes `tf.keras` to tf_keras when TF_USE_LEGACY_KERAS=1 is
set before its first use of `tf.keras`, so the export workers (processes and Ray actors)
and the `rllib-mlflow` command set it first thing, whatever the user's environment says.
The Keras 3 that the new stack's exports use (`import keras`) is not affected by it. In a
user's own process, `rllib.old_stack` sets it when TensorFlow is not imported yet, and says
what to set when it is.
"""

from __future__ import annotations

import os

ENVIRONMENT = {"TF_USE_LEGACY_KERAS": "1"}


def use_legacy_keras() -> None:
    """In a process of ours, before TensorFlow loads: `tf.keras` is tf_keras there."""
    os.environ.update(ENVIRONMENT)
