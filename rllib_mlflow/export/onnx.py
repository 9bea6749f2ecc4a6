"""Export the policy to ONNX from RLlib's own torch module, preprocessing and action rule
included, so that ONNX Runtime alone computes the action the environment receives.

The graph's inputs and outputs are named after `PolicySnapshot.graph_inputs()` and
`graph_outputs()`: the observation (or one input per key of a Dict observation), the
recurrent state (`state_in_*` -> `state_out_*`) and the previous actions and rewards.
"""

from __future__ import annotations

import types
import warnings
from typing import Any

import numpy as np
import torch

from rllib_mlflow.errors import RLlibMLflowError
from rllib_mlflow.export.refusals import tracing_refusal
from rllib_mlflow.export.tracing import onnx_additions
from rllib_mlflow.rllib.networks import lstm_actor_encoder
from rllib_mlflow.rllib.reader import flatten_state, unflatten_state
from rllib_mlflow.rllib.reference import module_dist_inputs, restore_rl_module
from rllib_mlflow.rllib.snapshot import ActionRule, PolicySnapshot

OPSET = 17


def write_onnx(snapshot: PolicySnapshot, path: str, *, dist_inputs_only: bool = False) -> None:
    """Write the policy graph; with `dist_inputs_only`, without actions and state outputs
    (the network alone, which the `.h5` of a traced module holds)."""
    policy = TorchPolicy(snapshot)
    inputs = snapshot.graph_inputs()
    outputs = ["action_dist_inputs"] if dist_inputs_only else snapshot.graph_outputs()
    policy.outputs = outputs
    examples = tuple(torch.zeros((2, *shape), dtype=torch.float32) for _, shape in inputs)
    names = [name for name, _ in inputs]
    with warnings.catch_warnings(), onnx_additions(OPSET):
        # The tracer warns about RLlib's shape assertions and the LSTM's batch size; the
        # parity check, not the tracer, decides whether the graph is right.
        warnings.filterwarnings(
            "ignore",
            category=torch.jit.TracerWarning,  # pyright: ignore[reportPrivateImportUsage]  # torch exports it, its stubs' __all__ does not
        )
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size")
        try:
            _export(policy, examples, path, names, outputs)
        except RLlibMLflowError:
            raise
        except Exception as error:  # the module's forward pass or the tracer: one line
            raise tracing_refusal(snapshot, error) from error


def _export(policy, examples, path: str, names: list[str], outputs: list[str]) -> None:
    torch.onnx.export(
        policy,
        examples,
        path,
        input_names=names,
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in names + outputs},
        opset_version=OPSET,
        dynamo=False,  # the TorchScript tracer handles RLlib's dict-based forward passes
    )


class TorchPolicy(torch.nn.Module):
    """Graph inputs -> (actions, action_dist_inputs, next state) around RLlib's module."""

    mean: torch.Tensor  # buffers of the MeanStdFilter, when the policy has one
    std: torch.Tensor

    def __init__(self, snapshot: PolicySnapshot):
        super().__init__()
        # Any: RLlib's modules carry what each algorithm defines (pi, encoder, ...).
        self.module: Any = _dist_inputs_module(snapshot)
        self.module.eval()
        _trace_free_log_std_per_row(self.module)
        self.snapshot = snapshot
        self.rule = snapshot.action_rule
        self.input_names = [name for name, _ in snapshot.graph_inputs()]
        self.outputs = snapshot.graph_outputs()
        self.filter = snapshot.mean_std_filter
        if self.filter is not None:
            self.register_buffer("mean", torch.tensor(self.filter.mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(self.filter.std, dtype=torch.float32))

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, tensors))
        observations = self._module_observations(named)
        if self.snapshot.state:
            dist_inputs, state_out = self._recurrent_step(observations, named)
        else:
            dist_inputs, state_out = self._dist_inputs(observations), {}
        results = {"actions": self._actions(dist_inputs), "action_dist_inputs": dist_inputs}
        results.update({f"state_out_{name}": value for name, value in state_out.items()})
        return tuple(results[name] for name in self.outputs)

    def _module_observations(self, named):
        keys = self.snapshot.observation_inputs
        if keys is not None:
            return {key: named[key] for key in keys}  # a fresh dict: modules may pop from it
        x = named["observations"]
        if self.filter is not None:
            if self.filter.demean:
                x = x - self.mean
            if self.filter.destd:
                x = x / (self.std + self.filter.epsilon)
            if self.filter.clip:
                x = torch.clamp(x, -self.filter.clip, self.filter.clip)
        if self.snapshot.frame_stack > 1:
            # FrameStacking: the previous frames, oldest first, then this one, on the last axis.
            past = named["prev_frames"].reshape(
                x.shape[0], self.snapshot.frame_stack - 1, *self.snapshot.input_shape[:-1]
            )
            x = torch.cat([torch.movedim(past, 1, -1), x], dim=-1)
        prev = self.snapshot.prev_actions_rewards
        if prev is not None and prev.joins == "observations":
            # FlattenObservations after PrevActionsPrevRewards: the Dict's keys in sorted
            # order ("_orig_obs", "prev_n_actions", "prev_n_rewards").
            x = torch.cat([x, named["prev_n_actions"], named["prev_n_rewards"]], dim=-1)
        return x

    def _dist_inputs(self, observations):
        if self.snapshot.api_stack == "old":  # a plain module: observations -> dist inputs
            return self.module(observations)
        return module_dist_inputs(self.module, observations)

    def _recurrent_step(self, observations, named):
        """One time step with the state as explicit tensors ([B, size] each)."""
        if self.snapshot.api_stack == "old":  # RLlib's old-stack LSTMWrapper
            # Its previous actions and rewards (if it reads them) join after the fcnet.
            history = [named[w.name] for w in self.snapshot.history()]
            dist_inputs, h, c = self.module(
                observations, named["state_in_h"], named["state_in_c"], *history
            )
            return dist_inputs, {"h": h, "c": c}
        from ray.rllib.core.columns import Columns
        from ray.rllib.core.models.base import ENCODER_OUT

        batch = observations.shape[0]
        flat = {
            s.name: named[f"state_in_{s.name}"].reshape(batch, *s.shape)
            for s in self.snapshot.state
        }
        inputs = {Columns.OBS: observations[:, None]}
        network = self.snapshot.network
        if network is not None and network.lstm:
            # RLlib's default stateful PPO module: only the actor's encoder decides actions.
            encoder = lstm_actor_encoder(self.module)
            out = encoder({**inputs, Columns.STATE_IN: flat})
            dist_inputs = self.module.pi(out[ENCODER_OUT])[:, 0]
            state_out = out[Columns.STATE_OUT]
        else:
            like = self.module.get_initial_state()
            state_in = unflatten_state(flat, like)
            out = self.module.forward_inference({**inputs, Columns.STATE_IN: state_in})
            dist_inputs = out[Columns.ACTION_DIST_INPUTS][:, 0]
            state_out = flatten_state(out[Columns.STATE_OUT])
        return dist_inputs, {
            s.name: state_out[s.name].reshape(batch, s.size) for s in self.snapshot.state
        }

    def _actions(self, dist_inputs):
        if self.snapshot.custom_distribution is None:
            return torch_actions(dist_inputs, self.rule)
        # Trace the module's own distribution, on a copy: it may change its input in place.
        dist_cls = self.module.get_inference_action_dist_cls()
        actions = dist_cls.from_logits(dist_inputs.clone()).to_deterministic().sample()
        return _normalize_and_clip(actions, self.rule) if not self.rule.is_discrete else actions


def _trace_free_log_std_per_row(module) -> None:
    """RLlib's free_log_std head repeats its log stds `len(mean)` times, which the tracer
    freezes at the example's batch size: broadcast them to the means' shape instead."""
    from ray.rllib.core.models.torch.heads import TorchFreeLogStdMLPHead

    def forward(head, inputs, **kwargs):
        mean = head.net(inputs)
        log_std = head.log_std
        if head.clip_log_std:
            bound = head.log_std_clip_param_const
            log_std = torch.clamp(log_std, -bound, bound)
        return torch.cat([mean, log_std.expand_as(mean)], dim=-1)

    for head in module.modules():
        if isinstance(head, TorchFreeLogStdMLPHead):
            head._forward = types.MethodType(forward, head)


def _dist_inputs_module(snapshot: PolicySnapshot) -> torch.nn.Module:
    """RLlib's torch RLModule; for the old API stack, the torch policy's own model, or (TF2
    policies) a torch module computing the snapshot's network. The parity check decides."""
    if snapshot.api_stack != "old":
        return restore_rl_module(snapshot)
    if snapshot.state:  # RLlib's LSTMWrapper, one step
        from rllib_mlflow.export.torch_recurrent import old_stack_lstm_module

        return old_stack_lstm_module(snapshot)
    # RLlib's AppendBiasLayer (free_log_std) repeats the bias len(x) times, which the tracer
    # fixes to the example batch: such models are traced from their Network instead.
    if snapshot.framework == "torch" and not snapshot.model_config.get("free_log_std"):
        from rllib_mlflow.rllib.old_reference import old_stack_torch_model

        return old_stack_torch_model(snapshot)
    from rllib_mlflow.export.torch_network import NetworkModule

    assert snapshot.network is not None, "old-stack snapshots hold their network"
    return NetworkModule(snapshot.network)


def torch_actions(dist_inputs: torch.Tensor, rule: ActionRule) -> torch.Tensor:
    """The deterministic action RLlib sends to the env, in torch ops (traceable)."""
    if rule.distribution == "categorical":
        return torch.argmax(dist_inputs, dim=-1)
    if rule.distribution == "multi_categorical":
        parts = torch.split(dist_inputs, list(rule.input_lens), dim=-1)
        return torch.stack([torch.argmax(p, dim=-1) for p in parts], dim=-1)
    mean = dist_inputs[:, : rule.input_lens[0]]
    if rule.distribution == "tanh_squashed_gaussian":  # the old stack's SquashedGaussian
        mean = torch.tanh(mean)
    return _normalize_and_clip(mean, rule)


def _normalize_and_clip(actions, rule: ActionRule):
    """RLlib's NormalizeAndClipActions connector in torch ops."""
    if rule.normalize_actions or rule.clip_actions:
        low = torch.from_numpy(np.asarray(rule.low, np.float32))
        high = torch.from_numpy(np.asarray(rule.high, np.float32))
        if rule.normalize_actions:
            actions = low + (actions + 1.0) * (high - low) / 2.0
        actions = torch.maximum(torch.minimum(actions, high), low)
    return actions
