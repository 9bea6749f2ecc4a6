"""RLlib's own inference path for a snapshot, which parity checks compare the exports against.

It restores the torch RLModule and acts as an EnvRunner with explore=False does: RLlib's
MeanStdFilter, the module's inference distribution and RLlib's unsquash/clip functions.
The ONNX exporter traces the same module through `module_dist_inputs`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rllib_mlflow.rllib.modules import restore_module
from rllib_mlflow.rllib.snapshot import MeanStdFilter, PolicySnapshot

if TYPE_CHECKING:
    from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule


def restore_rl_module(snapshot: PolicySnapshot) -> TorchRLModule:
    """RLlib's torch RLModule for `snapshot`, restored without starting Ray."""
    module = restore_module(Path(snapshot.module_dir))
    return cast("TorchRLModule", module)  # the new API stack's modules are torch ones


def rllib_reference(
    snapshot: PolicySnapshot,
) -> Callable[[Any], tuple[Any, np.ndarray]]:
    """RLlib's own inference path for `snapshot`: raw observations -> (actions, dist inputs).

    Uses the restored torch module, its inference action distribution, RLlib's
    MeanStdFilter and RLlib's unsquash/clip functions, exactly as an EnvRunner with
    explore=False does. Observations are one array, or a dict of arrays (one per key) for
    a module that reads Dict observations. An old-API-stack snapshot is compared with its
    restored Policy instead (`old_reference`).
    """
    if snapshot.api_stack == "old":
        from rllib_mlflow.rllib.old_reference import old_stack_reference

        return old_stack_reference(snapshot)
    import torch

    module = restore_rl_module(snapshot)
    module.eval()
    obs_filter = _rllib_filter(snapshot.mean_std_filter)

    def act(observations: Any) -> tuple[Any, np.ndarray]:
        obs = _module_input(observations, obs_filter)
        with torch.no_grad():
            dist_inputs = _dist_inputs(module, obs)
            actions = _rllib_actions(module, snapshot, dist_inputs)
        return actions, dist_inputs.numpy()

    return act


def rllib_activation_scale(snapshot: PolicySnapshot, observations: Any) -> np.ndarray:
    """Per batch row, the largest magnitude among the module's input and the outputs of
    each of its layers: float32 rounding grows with it (a CNN on 0-255 pixels differs from
    another float32 implementation by more than 1e-5 in absolute terms)."""
    import torch

    obs = _module_input(observations, _rllib_filter(snapshot.mean_std_filter))
    scales = [_row_magnitude(t) for t in (obs.values() if isinstance(obs, dict) else [obs])]
    if snapshot.api_stack == "old":  # no RLModule to hook: the input's magnitude alone
        return np.max(np.stack(scales), axis=0)
    module = restore_rl_module(snapshot)
    module.eval()
    rows = scales[0].shape[0]

    def record(_layer, _inputs, output):
        for tensor in output if isinstance(output, (tuple, list)) else [output]:
            if isinstance(tensor, torch.Tensor) and tensor.dim() and tensor.shape[0] == rows:
                scales.append(_row_magnitude(tensor))

    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [leaf.register_forward_hook(record) for leaf in leaves]
    try:
        with torch.no_grad():
            _dist_inputs(module, obs)
    finally:
        for hook in hooks:
            hook.remove()
    return np.max(np.stack(scales), axis=0)


def _row_magnitude(tensor) -> np.ndarray:
    values = tensor.detach().float().abs().reshape(tensor.shape[0], -1)
    return values.max(dim=1).values.numpy() if values.shape[1] else np.zeros(values.shape[0])


def _module_input(observations: Any, obs_filter):
    """Raw observations as the module receives them: RLlib's MeanStdFilter (without updating
    it), as torch tensors; a dict of arrays for a module that reads Dict observations."""
    import torch

    if isinstance(observations, dict):
        return {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in observations.items()}
    obs = np.asarray(observations, dtype=np.float32)
    if obs_filter is not None:
        obs = obs_filter(obs, update=False)
    return torch.from_numpy(np.asarray(obs, np.float32))


def rllib_sequence_reference(
    snapshot: PolicySnapshot,
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """RLlib's own inference path for a stateful module over whole sequences.

    observations [T, B, ...] and rewards [T, B] (the reward each step's action earned) ->
    (actions [T, B, ...], dist inputs [T, B, ...]). The module's full state starts at
    `get_initial_state()` and is carried from step to step by `forward_inference`, as an
    EnvRunner does; PrevActionsPrevRewards' and FrameStacking's history starts as zeros.
    """
    if snapshot.api_stack == "old":
        from rllib_mlflow.rllib.old_reference import old_stack_sequence_reference

        return old_stack_sequence_reference(snapshot)
    import torch
    from ray.rllib.core.columns import Columns

    module = restore_rl_module(snapshot)
    module.eval()

    def run(observations: np.ndarray, rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        steps, batch = observations.shape[:2]
        state = _batched(module.get_initial_state(), batch)
        windows = _ReferenceWindows(snapshot, batch)
        all_actions, all_inputs = [], []
        for t in range(steps):
            obs = windows.module_observations(np.asarray(observations[t], np.float32))
            with torch.no_grad():
                batch_in: dict[str, Any] = {Columns.OBS: torch.from_numpy(obs)}
                if snapshot.state:  # a recurrent module takes [batch, time=1, ...]
                    batch_in = {Columns.OBS: batch_in[Columns.OBS][:, None]}
                    batch_in[Columns.STATE_IN] = state
                out = module.forward_inference(batch_in)
                dist_inputs = out[Columns.ACTION_DIST_INPUTS]
                dist_inputs = dist_inputs[:, 0] if dist_inputs.dim() > 2 else dist_inputs
                actions = _rllib_actions(module, snapshot, dist_inputs)
            state = out.get(Columns.STATE_OUT, state)
            windows.advance(observations[t], actions, rewards[t])
            all_actions.append(actions)
            all_inputs.append(dist_inputs.numpy())
        return np.stack(all_actions), np.stack(all_inputs)

    return run


class _ReferenceWindows:
    """What RLlib's PrevActionsPrevRewards + FlattenObservations and FrameStacking
    connectors make of an episode's history, kept with plain numpy for the reference."""

    def __init__(self, snapshot: PolicySnapshot, batch: int):
        self.prev = snapshot.prev_actions_rewards
        self.frames = snapshot.frame_stack
        shape = (batch, *snapshot.input_shape)
        self.past_frames = [np.zeros(shape, np.float32)] * max(self.frames - 1, 0)
        if self.prev is not None:
            self.actions = np.zeros((batch, self.prev.n_prev_actions * self.prev.num_actions))
            self.rewards = np.zeros((batch, self.prev.n_prev_rewards))

    def module_observations(self, obs: np.ndarray) -> np.ndarray:
        if self.frames > 1:  # stacked on the last axis, the current frame last
            obs = np.concatenate([*self.past_frames, obs], axis=-1)
        if self.prev is not None:
            obs = np.concatenate([obs, self.actions, self.rewards], axis=-1)
        return obs.astype(np.float32)

    def advance(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        if self.frames > 1:
            self.past_frames = [*self.past_frames[1:], np.asarray(obs, np.float32)]
        if self.prev is not None:
            one_hot = np.eye(self.prev.num_actions)[actions]
            self.actions = np.concatenate([self.actions, one_hot], -1)[:, self.prev.num_actions :]
            self.rewards = np.concatenate([self.rewards, rewards[:, None]], -1)[:, 1:]


def _batched(state: dict, batch: int) -> dict:
    return {
        k: _batched(v, batch) if isinstance(v, dict) else v[None].repeat(batch, *[1] * v.dim())
        for k, v in state.items()
    }


def _rllib_actions(module, snapshot: PolicySnapshot, dist_inputs) -> np.ndarray:
    """The action an EnvRunner with explore=False sends, from the module's distribution
    inputs. The distribution gets a copy: custom ones may change their input in place."""
    from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

    dist_cls = module.get_inference_action_dist_cls()
    actions = dist_cls.from_logits(dist_inputs.clone()).to_deterministic().sample().numpy()
    rule = snapshot.action_rule
    action_space = _gym_space(snapshot.action_space)
    if rule.normalize_actions:
        actions = np.stack([np.asarray(unsquash_action(a, action_space)) for a in actions])
    elif rule.clip_actions:
        actions = np.stack([np.asarray(clip_action(a, action_space)) for a in actions])
    return actions


def module_dist_inputs(module: Any, observations: Any) -> Any:
    """The module's action_dist_inputs for a torch batch of preprocessed observations,
    computed with operators `torch.onnx.export` can trace."""
    if getattr(module, "uses_dueling", False) and module.num_atoms == 1:
        # RLlib centers advantages with nanmean (for masked actions), which ONNX lacks;
        # without masking it equals mean.
        from ray.rllib.core.columns import Columns
        from ray.rllib.core.models.base import ENCODER_OUT

        features = module.encoder({Columns.OBS: observations})[ENCODER_OUT]
        advantages = module.af(features)
        return module.vf(features) + advantages - advantages.mean(dim=-1, keepdim=True)
    return _dist_inputs(module, observations)


def _dist_inputs(module, observations):
    from ray.rllib.core.columns import Columns

    batch = {Columns.OBS: observations}
    if hasattr(module, "uses_dueling"):  # DQN: its inference output holds only actions
        return module.compute_q_values(batch)["qf_preds"]
    return module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]


def rllib_flattened(space: dict[str, Any], samples: list) -> np.ndarray:
    """Raw observations of `space` (policy.json's description) flattened by RLlib's own
    function, as its FlattenObservations connector calls it."""
    import tree
    from ray.rllib.utils.numpy import flatten_inputs_to_1d_tensor
    from ray.rllib.utils.spaces.space_utils import get_base_struct_from_space

    batch = tree.map_structure(lambda *parts: np.stack(parts), *samples)
    struct = get_base_struct_from_space(_gym_space(space))
    # Ray types the struct it returns wider than the one it takes back.
    flat = flatten_inputs_to_1d_tensor(batch, struct, batch_axis=True)  # pyright: ignore[reportArgumentType]
    return np.asarray(flat, np.float32)


def _rllib_filter(spec: MeanStdFilter | None):
    """RLlib's own MeanStdFilter, restored from the checkpointed running statistics."""
    if spec is None:
        return None
    from ray.rllib.utils.filter import MeanStdFilter as RLlibMeanStdFilter
    from ray.rllib.utils.filter import RunningStat

    obs_filter = RLlibMeanStdFilter(
        spec.mean.shape,
        demean=spec.demean,
        destd=spec.destd,
        clip=spec.clip,  # pyright: ignore[reportArgumentType]  # RLlib takes None: no clipping
    )
    obs_filter.running_stats = RunningStat.from_state(spec.rllib_state)
    return obs_filter


def _gym_space(data: dict[str, Any]):
    from rllib_mlflow.policy.spaces import space_from_json

    return space_from_json(data)
