"""Write the Keras policy as a TF SavedModel (with the action rule) and as Keras `.h5`."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from rllib_mlflow import _tensorflow_first  # noqa: F401 - before Keras builds anything
from rllib_mlflow.rllib.snapshot import ActionRule, PolicySnapshot


def write_h5(model: keras.Model, path: str) -> None:
    """The network alone (graph inputs -> action_dist_inputs and next state), legacy H5."""
    model.save(path)


def write_saved_model(model: keras.Model, snapshot: PolicySnapshot, path: str) -> None:
    """A SavedModel whose serving_default takes the graph inputs by name and returns
    `actions`, `action_dist_inputs` and, for a stateful policy, `state_out_*`."""
    inputs = snapshot.graph_inputs()
    state_names = [f"state_out_{s.name}" for s in snapshot.state]
    rule = snapshot.action_rule

    def serve(*tensors):
        outputs = model(list(tensors))
        dist_inputs, states = (outputs[0], outputs[1:]) if state_names else (outputs, [])
        return {
            "actions": tf_actions(dist_inputs, rule),
            "action_dist_inputs": dist_inputs,
            **dict(zip(state_names, states)),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[
            tf.TensorSpec([None, *shape], tf.float32, name=name) for name, shape in inputs
        ],
    )
    # keras.export.ExportArchive is the TensorFlow backend's here; its stubs mix in the others.
    archive.write_out(path, verbose=False)  # pyright: ignore[reportAttributeAccessIssue]


def tf_actions(dist_inputs: tf.Tensor, rule: ActionRule) -> tf.Tensor:
    """The deterministic action RLlib sends to the env, in TensorFlow ops."""
    if rule.distribution == "categorical":
        return tf.argmax(dist_inputs, axis=-1)
    if rule.distribution == "multi_categorical":
        parts = tf.split(dist_inputs, list(rule.input_lens), axis=-1)
        return tf.stack([tf.argmax(p, axis=-1) for p in parts], axis=-1)
    size = rule.input_lens[0]
    actions = dist_inputs[:, :size]
    if rule.distribution == "tanh_squashed_gaussian":  # the old stack's SquashedGaussian
        actions = tf.tanh(actions)
    low, high = _bounds(rule)
    if rule.normalize_actions:
        # The tensor first, so the sum is one (numpy's stubs type ndarray + tensor as ndarray).
        actions = tf.clip_by_value((actions + 1.0) * (high - low) / 2.0 + low, low, high)
    elif rule.clip_actions:
        actions = tf.clip_by_value(actions, low, high)
    return actions


def _bounds(rule: ActionRule) -> tuple[np.ndarray, np.ndarray]:
    assert rule.low is not None and rule.high is not None, "a Box action rule has bounds"
    return rule.low.astype(np.float32), rule.high.astype(np.float32)
