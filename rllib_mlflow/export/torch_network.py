"""A torch module computing a snapshot's `Network`, for the ONNX graph of policies that have
no torch model of their own (RLlib's old-stack TF2 policies).

Tensors stay in Keras' NHWC layout throughout, so that the layers mean exactly what the Keras
rebuild means (a flatten after convolutions orders features H, W, C); the parity check
against RLlib's TF policy proves the result.
"""

from __future__ import annotations

import torch
from torch import nn

from rllib_mlflow.errors import UnsupportedModuleError
from rllib_mlflow.rllib.snapshot import Layer, Network

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU}
_ACTIVATIONS |= {"sigmoid": nn.Sigmoid}


class NetworkModule(nn.Module):
    """Preprocessed observations -> action_dist_inputs, from `network`'s layers."""

    def __init__(self, network: Network):
        super().__init__()
        if network.log_std_clip is not None or network.lstm:
            raise UnsupportedModuleError(
                "Only sequential networks (encoder, head, a dueling value head) are rebuilt "
                "in torch for ONNX."
            )
        self.layers = nn.Sequential(*(_torch_layer(layer) for layer in network.encoder))
        self.head = nn.Sequential(*(_torch_layer(layer) for layer in network.head))
        value_head = network.value_head
        self.value = None if value_head is None else nn.Sequential(*map(_torch_layer, value_head))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        features = self.layers(observations)
        outputs = self.head(features)
        if self.value is None:
            return outputs
        # Dueling Q-values as RLlib combines them: V + (A - mean(A)).
        return self.value(features) + (outputs - outputs.mean(dim=-1, keepdim=True))


def _torch_layer(layer: Layer) -> nn.Module:
    if layer.kind == "dense":
        kernel, bias = layer.weights
        linear = nn.Linear(kernel.shape[0], kernel.shape[1])
        linear.weight.data = torch.from_numpy(kernel.T.copy())
        linear.bias.data = torch.from_numpy(bias.copy())
        return linear
    if layer.kind == "activation":
        return _ACTIVATIONS[layer.config["name"]]()
    if layer.kind == "conv2d":
        return _NHWCConv(layer)
    if layer.kind == "pad2d":
        c = layer.config
        return _NHWCPad((c["left"], c["right"], c["top"], c["bottom"]))
    if layer.kind == "flatten":
        return nn.Flatten()
    raise UnsupportedModuleError(f"Layer kind {layer.kind!r} is not rebuilt in torch.")


class _NHWCConv(nn.Module):
    def __init__(self, layer: Layer):
        super().__init__()
        kernel, bias = layer.weights  # [h, w, in, out]
        self.conv = nn.Conv2d(
            kernel.shape[2],
            kernel.shape[3],
            tuple(kernel.shape[:2]),
            stride=tuple(layer.config["strides"]),
        )
        self.conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        assert self.conv.bias is not None  # Conv2d has one by default
        self.conv.bias.data = torch.from_numpy(bias.copy())

    def forward(self, x):
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class _NHWCPad(nn.Module):
    def __init__(self, padding: tuple[int, int, int, int]):
        super().__init__()
        self.pad = nn.ZeroPad2d(padding)

    def forward(self, x):
        return self.pad(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
