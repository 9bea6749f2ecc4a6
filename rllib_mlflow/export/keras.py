"""Rebuild a policy's inference network in Keras, from standard layers only.

The model maps raw observations to `action_dist_inputs`, preprocessing included, so
that `keras.models.load_model("model.h5")` needs no custom objects and runs in safe
mode. Operations Keras has no layer for are composed from standard layers: clipping
is Rescaling + hard_tanh, a mean over features is GlobalAveragePooling1D.
"""

from __future__ import annotations

import keras
import numpy as np

from rllib_mlflow.errors import UnsupportedModuleError
from rllib_mlflow.rllib.snapshot import Layer, MeanStdFilter, Network, PolicySnapshot


def build_keras_model(snapshot: PolicySnapshot) -> keras.Model:
    """A Keras model: graph inputs -> action_dist_inputs (and, for an LSTM policy, the next
    state), with the snapshot's weights. Inputs are named as in `snapshot.graph_inputs()`."""

    if snapshot.network is None:
        raise UnsupportedModuleError(snapshot.unsupported_reason or "No rebuildable network.")
    network = snapshot.network
    inputs = {
        name: keras.Input(shape, dtype="float32", name=name)
        for name, shape in snapshot.graph_inputs()
    }
    x = inputs["observations"]
    if snapshot.mean_std_filter is not None:
        x = _mean_std_filter(x, snapshot.mean_std_filter)
    if snapshot.frame_stack > 1:
        x = _stack_frames(x, inputs["prev_frames"], snapshot)
    prev = snapshot.prev_actions_rewards
    if prev is not None and prev.joins == "observations":
        x = _with_history(x, snapshot, inputs)
    for layer in network.encoder:
        x = _apply(layer, x)
    if prev is not None and prev.joins == "lstm":  # the old stack's LSTMWrapper
        x = _with_history(x, snapshot, inputs)
    state_out = {}
    if network.lstm:
        x, state_out = _lstm(x, network, snapshot, inputs)
    outputs = _head(x, network)
    name = f"policy_{_safe(snapshot.module_id)}"
    if not state_out:
        return keras.Model(list(inputs.values()), outputs, name=name)
    return keras.Model(list(inputs.values()), [outputs, *state_out.values()], name=name)


def _with_history(x, snapshot: PolicySnapshot, inputs):
    """x, then the previous actions (one-hot) and rewards, on the last axis."""
    windows = [inputs[w.name] for w in snapshot.history() if w.name.startswith("prev_n_")]
    return keras.layers.Concatenate(axis=-1)([x, *windows])


def _stack_frames(x, past, snapshot: PolicySnapshot):
    """FrameStacking: the previous frames (flat, oldest first) and this one, last axis."""
    frames, shape = snapshot.frame_stack - 1, snapshot.input_shape[:-1]
    past = keras.layers.Reshape((frames, *shape))(past)
    past = keras.layers.Permute((*range(2, len(shape) + 2), 1))(past)
    return keras.layers.Concatenate(axis=-1)([past, x])


def _lstm(x, network: Network, snapshot: PolicySnapshot, inputs):
    """RLlib's LSTM encoder for one time step: state_in_h/c -> output, state_out_h/c."""
    names = [s.name for s in snapshot.state]
    if len(network.lstm) != 1 or sorted(names) != ["c", "h"]:
        raise UnsupportedModuleError(
            f"An LSTM with {len(network.lstm)} layers cannot be rebuilt in Keras yet (one "
            "layer can); ONNX is still exported from the torch module."
        )
    (layer,) = network.lstm
    lstm = keras.layers.LSTM(layer.units, return_state=True, unroll=True)
    sequence = keras.layers.Reshape((1, x.shape[-1]))(x)
    output, h, c = lstm(sequence, initial_state=[inputs["state_in_h"], inputs["state_in_c"]])
    lstm.set_weights(list(layer.weights))
    state_out = {
        "h": keras.layers.Identity(name="state_out_h")(h),
        "c": keras.layers.Identity(name="state_out_c")(c),
    }
    return output, {name: state_out[name] for name in names}


def _mean_std_filter(x, spec: MeanStdFilter):

    mean = spec.mean if spec.demean else np.zeros_like(spec.mean)
    std = spec.std + spec.epsilon if spec.destd else np.ones_like(spec.std)
    axes = tuple(range(1, spec.mean.ndim + 1))
    x = keras.layers.Normalization(
        axis=axes,  # pyright: ignore[reportArgumentType]  # Keras takes a tuple (its docs), typed int
        mean=mean.astype(np.float32),
        variance=np.square(std).astype(np.float32),
    )(x)
    return _clip(x, spec.clip) if spec.clip else x


def _clip(x, bound: float):
    """clip(x, -bound, bound) from standard layers: bound * hard_tanh(x / bound)."""

    x = keras.layers.Rescaling(1.0 / bound)(x)
    x = keras.layers.Activation("hard_tanh")(x)
    return keras.layers.Rescaling(float(bound))(x)


def _head(features, network: Network):

    head = list(network.head)
    x = features
    for layer in head[:-1]:
        x = _apply(layer, x)
    if network.free_log_std is not None:
        outputs = _with_free_log_std(_apply(head[-1], x), network.free_log_std)
    elif network.log_std_clip is None:
        outputs = _apply(head[-1], x)
    else:
        outputs = _gaussian_output(x, head[-1], network.log_std_clip)
    if network.value_head is not None:
        value = features
        for layer in network.value_head:
            value = _apply(layer, value)
        outputs = _dueling(outputs, value)
    return keras.layers.Identity(name="action_dist_inputs")(outputs)


def _gaussian_output(x, last: Layer, clip: float):
    """The last dense layer split in two, the log-std half clipped, as RLlib's head does."""

    kernel, bias = last.weights
    half = kernel.shape[1] // 2
    mean = _dense(x, kernel[:, :half], bias[:half])
    log_std = _clip(_dense(x, kernel[:, half:], bias[half:]), clip)
    return keras.layers.Concatenate(axis=-1)([mean, log_std])


def _with_free_log_std(mean, log_std: np.ndarray):
    """[mean, log_std for every row], from standard layers: a dense layer with a zero kernel
    and the log stds as bias repeats them for any batch size."""

    size = log_std.shape[0]
    repeated = _dense(mean, np.zeros((mean.shape[-1], size), np.float32), log_std)
    return keras.layers.Concatenate(axis=-1)([mean, repeated])


def _dueling(advantages, value):
    """Q = V + (A - mean(A)), RLlib's dueling combination."""

    n = advantages.shape[-1]
    mean = keras.layers.GlobalAveragePooling1D()(keras.layers.Reshape((n, 1))(advantages))
    mean = keras.layers.Flatten()(keras.layers.RepeatVector(n)(mean))
    value = keras.layers.Flatten()(keras.layers.RepeatVector(n)(value))
    centered = keras.layers.Subtract()([advantages, mean])
    return keras.layers.Add()([value, centered])


def _apply(layer: Layer, x):

    if layer.kind == "dense":
        return _dense(x, *layer.weights)
    if layer.kind == "activation":
        return keras.layers.Activation(layer.config["name"])(x)
    if layer.kind == "conv2d":
        kernel, bias = layer.weights
        conv = keras.layers.Conv2D(
            layer.config["filters"],
            tuple(layer.config["kernel"]),
            strides=tuple(layer.config["strides"]),
            padding="valid",
        )
        y = conv(x)
        conv.set_weights([kernel, bias])
        return y
    if layer.kind == "pad2d":
        c = layer.config
        return keras.layers.ZeroPadding2D(((c["top"], c["bottom"]), (c["left"], c["right"])))(x)
    if layer.kind == "flatten":
        return keras.layers.Flatten()(x)
    if layer.kind == "layer_norm":
        norm = keras.layers.LayerNormalization(epsilon=layer.config["epsilon"])
        y = norm(x)
        norm.set_weights(list(layer.weights))
        return y
    raise UnsupportedModuleError(f"Layer kind {layer.kind!r} has no Keras equivalent.")


def _dense(x, kernel: np.ndarray, bias: np.ndarray):

    dense = keras.layers.Dense(kernel.shape[1])
    y = dense(x)
    dense.set_weights([kernel, bias])
    return y


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in name)
