"""Export the policy to ONNX from RLlib's own torch module, preprocessing and action rule
included, so that ONNX Runtime alone computes the action the environment receives."""

from __future__ import annotations

import numpy as np
import torch

from rllib_mlflow import checkpoint
from rllib_mlflow.snapshot import ActionRule, PolicySnapshot

OPSET = 17


def write_onnx(snapshot: PolicySnapshot, path: str) -> None:
    policy = TorchPolicy(snapshot)
    example = torch.zeros((2, *snapshot.input_shape), dtype=torch.float32)
    torch.onnx.export(
        policy,
        (example,),
        path,
        input_names=["observations"],
        output_names=["actions", "action_dist_inputs"],
        dynamic_axes={
            "observations": {0: "batch"},
            "actions": {0: "batch"},
            "action_dist_inputs": {0: "batch"},
        },
        opset_version=OPSET,
        dynamo=False,  # the TorchScript tracer handles RLlib's dict-based forward passes
    )


class TorchPolicy(torch.nn.Module):
    """Raw observations -> (actions, action_dist_inputs) around RLlib's torch module."""

    def __init__(self, snapshot: PolicySnapshot):
        super().__init__()
        self.module = checkpoint.restore_rl_module(snapshot)
        self.module.eval()
        self.rule = snapshot.action_rule
        self.filter = snapshot.mean_std_filter
        if self.filter is not None:
            self.register_buffer("mean", torch.tensor(self.filter.mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(self.filter.std, dtype=torch.float32))

    def forward(self, observations):
        x = observations
        if self.filter is not None:
            if self.filter.demean:
                x = x - self.mean
            if self.filter.destd:
                x = x / (self.std + self.filter.epsilon)
            if self.filter.clip:
                x = torch.clamp(x, -self.filter.clip, self.filter.clip)
        dist_inputs = checkpoint.module_dist_inputs(self.module, x)
        return torch_actions(dist_inputs, self.rule), dist_inputs


def torch_actions(dist_inputs, rule: ActionRule):
    """The deterministic action RLlib sends to the env, in torch ops (traceable)."""
    if rule.distribution == "categorical":
        return torch.argmax(dist_inputs, dim=-1)
    if rule.distribution == "multi_categorical":
        parts = torch.split(dist_inputs, list(rule.input_lens), dim=-1)
        return torch.stack([torch.argmax(p, dim=-1) for p in parts], dim=-1)
    size = rule.input_lens[0]
    actions = dist_inputs[:, :size]
    if rule.normalize_actions or rule.clip_actions:
        low = torch.from_numpy(np.asarray(rule.low, np.float32))
        high = torch.from_numpy(np.asarray(rule.high, np.float32))
        if rule.normalize_actions:
            actions = low + (actions + 1.0) * (high - low) / 2.0
        actions = torch.maximum(torch.minimum(actions, high), low)
    return actions
