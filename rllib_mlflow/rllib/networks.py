"""Translate the torch network of one of RLlib's default RLModules into a `Network`.

The Keras exports are rebuilt from these framework-neutral layers and weights; a module
whose layers or inference path cannot be rebuilt gets a reason instead (ONNX is then
traced from the torch module).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rllib_mlflow.errors import UnsupportedModuleError
from rllib_mlflow.rllib.snapshot import Layer, LSTMLayer, Network


def _network_or_reason(module) -> tuple[Network | None, str | None]:
    try:
        return _network(module), None
    except UnsupportedModuleError as error:
        return None, str(error)


def _network(module) -> Network:
    from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import (
        DefaultDQNTorchRLModule,
    )
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import (
        DefaultPPOTorchRLModule,
    )
    from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import (
        DefaultSACTorchRLModule,
    )

    defaults = (DefaultPPOTorchRLModule, DefaultSACTorchRLModule, DefaultDQNTorchRLModule)
    base = next((cls for cls in defaults if isinstance(module, cls)), None)
    if base is not None and _overrides_inference(type(module), base):
        raise UnsupportedModuleError(
            f"{type(module).__module__}.{type(module).__name__} changes the inference path "
            f"of RLlib's {base.__name__}, so it cannot be rebuilt in Keras; its graph is "
            "traced to ONNX instead."
        )
    if isinstance(module, DefaultPPOTorchRLModule):
        actor = lstm_actor_encoder(module)
        gaussian = _gaussian_settings(module.pi)
        if hasattr(actor, "lstm"):
            return Network(
                _layers(actor.tokenizer), _layers(module.pi), lstm=_lstm(actor), **gaussian
            )
        return Network(_layers(actor), _layers(module.pi), **gaussian)
    if isinstance(module, DefaultSACTorchRLModule):
        return Network(
            _layers(module.pi_encoder), _layers(module.pi), **_gaussian_settings(module.pi)
        )
    if isinstance(module, DefaultDQNTorchRLModule):
        if module.num_atoms > 1:
            raise UnsupportedModuleError(
                f"Distributional DQN (num_atoms={module.num_atoms}) cannot be rebuilt in "
                "Keras yet; ONNX is still exported from the torch module."
            )
        if module.uses_dueling:
            return Network(_layers(module.encoder), _layers(module.af), _layers(module.vf))
        return Network(_layers(module.encoder), _layers(module.af))
    raise UnsupportedModuleError(
        f"{type(module).__module__}.{type(module).__name__} is not one of RLlib's default "
        "modules (PPO/APPO/IMPALA, DQN, SAC), so it cannot be rebuilt in Keras: the "
        "saved_model and h5 formats are unavailable. ONNX is still exported from the "
        "torch module."
    )


def _overrides_inference(cls, base) -> bool:
    """Whether `cls` (a subclass of one of RLlib's default modules) changes how it acts."""
    methods = ("_forward", "_forward_inference", "forward_inference", "compute_q_values")
    methods += ("get_inference_action_dist_cls",)
    return any(getattr(cls, m, None) is not getattr(base, m, None) for m in methods)


def lstm_actor_encoder(module: Any) -> Any:
    """The LSTM encoder that computes the actions of RLlib's default stateful PPO module."""
    encoder = module.encoder
    return encoder.encoder if hasattr(encoder, "encoder") else encoder.actor_encoder


def _lstm(encoder) -> tuple[LSTMLayer, ...]:
    lstm = encoder.lstm
    if not lstm.batch_first or lstm.bidirectional or lstm.proj_size or not lstm.bias:
        raise UnsupportedModuleError(f"{lstm} cannot be rebuilt in Keras.")
    layers = []
    for i in range(lstm.num_layers):
        kernel = _numpy(getattr(lstm, f"weight_ih_l{i}")).T
        recurrent = _numpy(getattr(lstm, f"weight_hh_l{i}")).T
        bias = _numpy(getattr(lstm, f"bias_ih_l{i}")) + _numpy(getattr(lstm, f"bias_hh_l{i}"))
        layers.append(LSTMLayer(lstm.hidden_size, (kernel, recurrent, bias)))
    return tuple(layers)


def _gaussian_settings(head) -> dict:
    """Network's log_std_clip and free_log_std for a policy head (neither for others)."""
    import torch

    log_std = getattr(head, "log_std", None)
    if not isinstance(log_std, torch.nn.Parameter):
        return {"log_std_clip": _log_std_clip(head)}
    # free_log_std=True: the net outputs only the means; the log stds are this parameter,
    # clipped as RLlib's TorchFreeLogStdMLPHead does before appending it to every row.
    free = _numpy(log_std).astype(np.float32)
    clip = _log_std_clip(head)
    return {"free_log_std": free if clip is None else np.clip(free, -clip, clip)}


def _log_std_clip(head) -> float | None:
    if getattr(head, "clip_log_std", False):
        return float(head.log_std_clip_param_const.item())
    return None


def _layers(torch_module) -> tuple[Layer, ...]:
    """Translate a torch module's leaf layers, in execution order, into `Layer`s."""
    import torch.nn as nn

    activations = {
        nn.Tanh: "tanh",
        nn.ReLU: "relu",
        nn.SiLU: "silu",
        nn.ELU: "elu",
        nn.Sigmoid: "sigmoid",
    }
    layers = []
    for leaf in torch_module.modules():
        if list(leaf.children()):
            continue
        if isinstance(leaf, nn.Linear):
            layers.append(Layer("dense", {"units": leaf.out_features}, _linear_weights(leaf)))
        elif isinstance(leaf, nn.Conv2d):
            layers.append(_conv_layer(leaf))
        elif isinstance(leaf, nn.ZeroPad2d):
            left, right, top, bottom = leaf.padding
            layers.append(
                Layer(
                    "pad2d",
                    {"top": top, "bottom": bottom, "left": left, "right": right},
                )
            )
        elif isinstance(leaf, nn.Flatten):
            layers.append(Layer("flatten"))
        elif isinstance(leaf, nn.LayerNorm):
            weights = (_numpy(leaf.weight), _numpy(leaf.bias))
            layers.append(Layer("layer_norm", {"epsilon": leaf.eps}, weights))
        elif type(leaf) in activations:
            layers.append(Layer("activation", {"name": activations[type(leaf)]}))
        elif isinstance(leaf, nn.Identity):
            continue
        else:
            raise UnsupportedModuleError(
                f"Layer {type(leaf).__module__}.{type(leaf).__name__} cannot be rebuilt in "
                "Keras: the saved_model and h5 formats are unavailable. ONNX is still "
                "exported from the torch module."
            )
    return tuple(layers)


def _numpy(tensor) -> np.ndarray:
    """A torch tensor, or any array a module hands out (Ray's LSTMContainingRLModule's
    initial state is numpy), as float32 numpy."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu().numpy()
    return np.asarray(tensor).astype(np.float32)


def _linear_weights(linear) -> tuple[np.ndarray, ...]:
    kernel = _numpy(linear.weight).T
    bias = _numpy(linear.bias) if linear.bias is not None else np.zeros(kernel.shape[1], np.float32)
    return kernel, bias


def _conv_layer(conv) -> Layer:
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding not in ((0, 0), "valid"):
        raise UnsupportedModuleError(f"Conv2d {conv} cannot be rebuilt in Keras.")
    kernel = _numpy(conv.weight).transpose(2, 3, 1, 0)  # [out,in,h,w] -> [h,w,in,out]
    bias = _numpy(conv.bias) if conv.bias is not None else np.zeros(kernel.shape[3], np.float32)
    config = {
        "filters": conv.out_channels,
        "kernel": list(conv.kernel_size),
        "strides": list(conv.stride),
    }
    return Layer("conv2d", config, (kernel, bias))
