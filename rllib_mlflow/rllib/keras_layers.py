"""Keras layers of RLlib's old-API-stack TF models as framework-neutral `Layer`s: shared by
the fcnet and vision translations (`old_models`) and the LSTM's (`old_lstm`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from rllib_mlflow.errors import UnsupportedModuleError
from rllib_mlflow.rllib.snapshot import Layer

# Keras activation functions by their __name__ -> the names `Layer("activation")` uses.
KERAS_ACTIVATIONS = {"tanh": "tanh", "relu": "relu", "swish": "silu", "silu": "silu"}
KERAS_ACTIVATIONS |= {"elu": "elu", "sigmoid": "sigmoid"}


def keras_dense(dense: Any) -> list[Layer]:
    """A Keras Dense layer as a dense `Layer`, then its activation (when not linear)."""
    kernel, bias = (np.asarray(w, np.float32) for w in dense.get_weights())
    steps = [Layer("dense", {"units": int(kernel.shape[1])}, (kernel, bias))]
    activation = getattr(dense.activation, "__name__", "linear")
    if activation != "linear":
        if activation not in KERAS_ACTIVATIONS:
            raise UnsupportedModuleError(f"Activation {activation!r} is not exported yet.")
        steps.append(Layer("activation", {"name": KERAS_ACTIVATIONS[activation]}))
    return steps
