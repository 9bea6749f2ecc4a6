"""Translate the ModelV2 of an RLlib old-API-stack policy (TF2 or torch) into a `Network`.

RLlib's catalog builds the same networks in both frameworks; the Keras exports and the
ONNX graph of a TF policy are rebuilt from these framework-neutral layers. Only the
catalog's own models are translated, each class checked exactly: a subclass or a custom
ModelV2 may compute anything, so it is refused rather than guessed.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from rllib_mlflow.errors import UnsupportedModuleError
from rllib_mlflow.rllib.keras_layers import KERAS_ACTIVATIONS, keras_dense
from rllib_mlflow.rllib.old_lstm import lstm_network, refuse_unsupported_lstm
from rllib_mlflow.rllib.snapshot import Layer, Network

# Old-stack action distributions (TF and torch names) -> the snapshot's action rule.
OLD_STACK_DISTRIBUTIONS = {
    "Categorical": "categorical",
    "TorchCategorical": "categorical",
    "MultiCategorical": "multi_categorical",
    "TorchMultiCategorical": "multi_categorical",
    "DiagGaussian": "diag_gaussian",
    "TorchDiagGaussian": "diag_gaussian",
    # DQN acts on its Q-values as the logits of a Categorical divided by a positive
    # temperature: the argmax, the action of explore=False, is the argmax of the Q-values.
    "CategoricalWithTemperature": "categorical",
    "TorchCategoricalWithTemperature": "categorical",
    # SAC's Box actions (normalize_actions=True): tanh of the mean, then unsquashed.
    "SquashedGaussian": "tanh_squashed_gaussian",
    "TorchSquashedGaussian": "tanh_squashed_gaussian",
}
_CATALOG = "ray.rllib.models.catalog"


def old_stack_network(policy: Any) -> Network:  # RLlib's Policy (see `restore_policy`)
    """The deterministic inference network of `policy.model`, or UnsupportedModuleError."""
    model = policy.model
    config = policy.config.get("model", {})
    refuse_unsupported_model(config)
    _refuse_unsupported_q_learning(policy.config)
    if config.get("use_lstm"):
        return lstm_network(model, config)
    cls = _class_name(model)
    translate = _TRANSLATORS.get(cls)
    if translate is None:
        raise UnsupportedModuleError(
            f"The old-stack model {cls} is not one of RLlib's catalog models that "
            "rllib-mlflow rebuilds (fcnet and visionnet, TF2 or torch, as PPO, APPO and IMPALA "
            "use them; DQN's Q-model and SAC's policy model around the fcnet), so no export "
            "could be proved to act like it: custom ModelV2s are not exported."
        )
    return translate(model)


def _class_name(model: Any) -> str:
    """The model's class name; for the catalog's generated wrapper of a model class in an
    interface (DQN's Q-model around the fcnet: "FullyConnectedNetwork_as_DQNTorchModel",
    whichever fcnet it wraps) both classes, so that each is matched exactly."""
    cls = type(model)
    if cls.__module__ != _CATALOG or len(cls.__bases__) != 2:
        return f"{cls.__module__}.{cls.__name__}"
    interface, wrapped = cls.__bases__
    return f"{wrapped.__module__}.{wrapped.__name__} as {interface.__module__}.{interface.__name__}"


def _refuse_unsupported_q_learning(config: dict) -> None:
    """Refuse the DQN options whose Q-values the exported layers do not compute."""
    if int(config.get("num_atoms") or 1) > 1:
        raise UnsupportedModuleError(
            f"Distributional DQN (num_atoms={config['num_atoms']}) is not exported from the "
            "old API stack: its Q-values are expectations over atoms the exports do not "
            "compute. DQN with num_atoms=1 is exported."
        )
    if config.get("noisy"):
        raise UnsupportedModuleError(
            "Noisy DQN (noisy=True) is not exported from the old API stack: its NoisyLayers "
            "are not rebuilt. DQN with noisy=False is exported."
        )
    if (config.get("exploration_config") or {}).get("type") == "ParameterNoise":
        raise UnsupportedModuleError(
            "DQN with ParameterNoise exploration (LayerNorm in its Q-head) is not exported "
            "from the old API stack."
        )


def distribution_name(policy: Any) -> str:
    """The action rule's name for the policy's action distribution class, or refusal."""
    dist = getattr(policy, "dist_class", None)
    dist = getattr(dist, "func", dist)  # Box actions: a functools.partial with the space
    name = getattr(dist, "__name__", repr(dist))
    if name not in OLD_STACK_DISTRIBUTIONS or dist.__module__.split(".")[:3] != [
        "ray",
        "rllib",
        "models",
    ]:
        raise UnsupportedModuleError(
            f"The old-stack action distribution {name} is not exported yet; supported: "
            f"{sorted(set(OLD_STACK_DISTRIBUTIONS))} (RLlib's own classes)."
        )
    bounds = getattr(policy.dist_class, "keywords", {})
    low, high = bounds.get("low", -1.0), bounds.get("high", 1.0)
    if name.endswith("SquashedGaussian") and not (np.all(low == -1.0) and np.all(high == 1.0)):
        # The rule squashes into [-1, 1] and leaves the bounds to the unsquashing (SAC's).
        raise UnsupportedModuleError(f"A {name} with bounds {bounds} is not exported yet.")
    return OLD_STACK_DISTRIBUTIONS[name]


def refuse_unsupported_model(config: dict) -> None:
    """Refuse, from the model config alone, the models no export can reproduce yet."""
    if config.get("use_attention"):
        raise UnsupportedModuleError(
            "The policy uses RLlib's attention net (use_attention=True); its memory of past "
            "steps cannot be reproduced by the exported graphs, so it is not exported."
        )
    if config.get("use_lstm"):
        refuse_unsupported_lstm(config)
    if config.get("custom_model"):
        raise UnsupportedModuleError(
            f"The policy uses the custom model {config['custom_model']!r}; custom "
            "ModelV2s are not exported from the old API stack."
        )


def _tf_fcnet(model) -> Network:
    """ray.rllib.models.tf.fcnet: Dense fc_1..fc_n, then fc_out (+ free log std)."""
    base = model.base_model
    names = [layer.name for layer in base.layers]
    hidden = [base.get_layer(n) for n in names if n.startswith("fc_") and n[3:].isdigit()]
    hidden.sort(key=lambda layer: int(layer.name[3:]))
    layers = [step for dense in hidden for step in keras_dense(dense)]
    if "fc_out" not in names:  # num_outputs=0 cannot act
        raise UnsupportedModuleError("The fcnet has no output layer (num_outputs=0).")
    out = base.get_layer("fc_out")
    head = keras_dense(out)
    log_std = getattr(model, "log_std_var", None)
    if log_std is not None:
        head = _append_log_std(head, np.asarray(log_std.numpy(), np.float32))
    return _split(layers, head)


def _tf_visionnet(model) -> Network:
    """ray.rllib.models.tf.visionnet: the chain of Conv2D (and post-fcnet Dense) layers that
    computes the logits; the model squeezes [B, 1, 1, n] to [B, n] (here: a flatten)."""
    chain = _keras_chain(model.base_model.outputs[0])
    layers = [step for layer in chain for step in _keras_layer(layer)]
    return Network(tuple(layers[:-1]), (*layers[-1:], Layer("flatten")))


def _keras_chain(output) -> list:
    """The layers from the model's input to `output`, each fed by the one before."""
    chain = []
    layer = output._keras_history.layer
    while type(layer).__name__ != "InputLayer":
        inbound = layer._inbound_nodes[0].inbound_layers
        if isinstance(inbound, list):  # several inputs: not a plain chain
            raise UnsupportedModuleError(f"The Keras layer {layer.name} has several inputs.")
        chain.append(layer)
        layer = inbound
    return chain[::-1]


def _keras_layer(layer) -> list[Layer]:
    kind = type(layer).__name__
    if kind == "Dense":
        return keras_dense(layer)
    if kind == "Flatten":
        return [Layer("flatten")]
    if kind != "Conv2D" or layer.data_format != "channels_last" or layer.dilation_rate != (1, 1):
        raise UnsupportedModuleError(f"The Keras layer {layer.name} ({kind}) is not exported.")
    kernel, bias = (np.asarray(w, np.float32) for w in layer.get_weights())
    steps = []
    if layer.padding == "same":
        steps.append(_same_padding(layer))
    config = {"filters": int(kernel.shape[3]), "kernel": list(kernel.shape[:2])}
    config["strides"] = list(layer.strides)
    steps.append(Layer("conv2d", config, (kernel, bias)))
    activation = getattr(layer.activation, "__name__", "linear")
    if activation != "linear":
        steps.append(Layer("activation", {"name": KERAS_ACTIVATIONS[activation]}))
    return steps


def _same_padding(conv) -> Layer:
    """TensorFlow's "same" padding as explicit zero padding (the extra row/column goes to
    the bottom/right, as TensorFlow puts it)."""
    pads = []
    for size, kernel, stride in zip(conv.input.shape[1:3], conv.kernel_size, conv.strides):
        out = -(-int(size) // stride)
        total = max((out - 1) * stride + kernel - int(size), 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return Layer("pad2d", {"top": top, "bottom": bottom, "left": left, "right": right})


def _torch_visionnet(model) -> Network:
    """ray.rllib.models.torch.visionnet: _convs, then _logits; [B, n, 1, 1] squeezed."""
    from rllib_mlflow.rllib.networks import _layers

    if model.last_layer_is_flattened:
        raise UnsupportedModuleError("The visionnet has no output layer (num_outputs=0).")
    layers = list(_layers(model._convs))
    head = list(_layers(model._logits)) if model._logits is not None else []
    return Network(tuple(layers), (*head, Layer("flatten")))


def _torch_fcnet(model) -> Network:
    """ray.rllib.models.torch.fcnet: _hidden_layers, then _logits (+ free log std)."""
    from rllib_mlflow.rllib.networks import _layers, _numpy

    layers = list(_layers(model._hidden_layers))
    head = list(_layers(model._logits)) if model._logits is not None else []
    if getattr(model, "free_log_std", False):
        head = _append_log_std(head, _numpy(model._append_free_log_std.log_std))
    return _split(layers, head)


def _split(layers: list[Layer], head: list[Layer]) -> Network:
    """Encoder and head; with no_final_linear the last hidden layer is the output."""
    if not head:
        if not layers:
            raise UnsupportedModuleError("The fcnet has no layers to act with.")
        last_dense = max(i for i, layer in enumerate(layers) if layer.kind == "dense")
        layers, head = layers[:last_dense], layers[last_dense:]
    return Network(tuple(layers), tuple(head))


def _append_log_std(head: list[Layer], log_std: np.ndarray) -> list[Layer]:
    """free_log_std appends a learned bias to the means. A dense layer whose extra outputs
    have zero weights and the log std as bias computes exactly that, with no new layer."""
    if not head or head[-1].kind != "dense":
        raise UnsupportedModuleError("free_log_std without a final linear layer is not exported.")
    kernel, bias = head[-1].weights
    kernel = np.concatenate([kernel, np.zeros((kernel.shape[0], log_std.size), np.float32)], 1)
    bias = np.concatenate([bias, log_std.ravel()])
    return [*head[:-1], Layer("dense", {"units": int(kernel.shape[1])}, (kernel, bias))]


def _tf_dqn(model) -> Network:
    """DistributionalQTFModel around RLlib's TF fcnet: the fcnet (its last hidden layer is
    the embedding), then `q_value_head`'s chain of Dense layers to the Q-values, or with
    dueling=True to the advantages and `state_value_head`'s chain to V."""
    scores = _keras_chain(model.q_value_head.outputs[0])
    value = None
    if hasattr(model, "state_value_head"):  # built only with dueling=True
        value = [
            step
            for layer in _keras_chain(model.state_value_head.outputs[0])
            for step in _keras_layer(layer)
        ]
    return _q_network(_tf_fcnet(model), [s for layer in scores for s in _keras_layer(layer)], value)


def _torch_dqn(model) -> Network:
    """DQNTorchModel around RLlib's torch fcnet: the fcnet, then `advantage_module` to the
    Q-values, or with dueling=True to the advantages and `value_module` to V."""
    from rllib_mlflow.rllib.networks import _layers

    value = list(_layers(model.value_module)) if model.dueling else None
    return _q_network(_torch_fcnet(model), list(_layers(model.advantage_module)), value)


def _q_network(fcnet: Network, scores: list[Layer], value: list[Layer] | None) -> Network:
    """DQN's Q-network: Q = A (or V + A - mean(A) with dueling, `Network.value_head`)."""
    if not scores:  # hiddens=[]: the fcnet's own output layer computes the Q-values
        if value is not None:
            raise UnsupportedModuleError("Dueling DQN with hiddens=[] is not exported.")
        return fcnet
    embedding = (*fcnet.encoder, *fcnet.head)
    return Network(embedding, tuple(scores), None if value is None else tuple(value))


def _sac(model) -> Network:
    """SAC's policy network: the model's own forward passes the (preprocessed) observations
    through unchanged, and `action_model`, one of the catalog's models, computes the
    action distribution's inputs ([mean, log_std] for Box actions, logits for Discrete)."""
    raw = getattr(model.obs_space, "original_space", model.obs_space)
    if isinstance(raw, (gym.spaces.Dict, gym.spaces.Tuple)):
        # SAC concatenates the unflattened parts itself, in an order of its own.
        raise UnsupportedModuleError(f"Old-stack SAC with {raw} observations is not exported.")
    policy_model = model.action_model
    translate = _CATALOG_MODELS.get(_class_name(policy_model))
    if translate is None:
        raise UnsupportedModuleError(
            f"SAC's policy model {_class_name(policy_model)} is not exported; RLlib's fcnet "
            "and visionnet are."
        )
    if policy_model.model_config.get("free_log_std"):
        raise UnsupportedModuleError("Old-stack SAC with free_log_std=True is not exported.")
    return translate(policy_model)


_CATALOG_MODELS = {
    "ray.rllib.models.tf.fcnet.FullyConnectedNetwork": _tf_fcnet,
    "ray.rllib.models.torch.fcnet.FullyConnectedNetwork": _torch_fcnet,
    "ray.rllib.models.tf.visionnet.VisionNetwork": _tf_visionnet,
    "ray.rllib.models.torch.visionnet.VisionNetwork": _torch_visionnet,
}
_TRANSLATORS = {
    **_CATALOG_MODELS,
    "ray.rllib.models.tf.fcnet.FullyConnectedNetwork as "
    "ray.rllib.algorithms.dqn.distributional_q_tf_model.DistributionalQTFModel": _tf_dqn,
    "ray.rllib.models.torch.fcnet.FullyConnectedNetwork as "
    "ray.rllib.algorithms.dqn.dqn_torch_model.DQNTorchModel": _torch_dqn,
    "ray.rllib.algorithms.sac.sac_tf_model.SACTFModel": _sac,
    "ray.rllib.algorithms.sac.sac_torch_model.SACTorchModel": _sac,
}
