"""RLlib's own inference path for a snapshot, which parity checks compare the exports against.

It restores the torch RLModule and runs it between the EnvRunner's own connector pipelines,
restored from the checkpoint (`pipelines.EnvRunnerReplay`): RLlib's flattening, filters and
history windows before the module, its action sampling, unsquashing and clipping after,
exactly as an EnvRunner with explore=False. Nothing of the exports' own rules is used.
The ONNX exporter traces the same module through `module_dist_inputs`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rllib_mlflow.rllib.modules import restore_module
from rllib_mlflow.rllib.pipelines import EnvRunnerReplay, unbatched
from rllib_mlflow.rllib.snapshot import PolicySnapshot

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

    Observations are what the env returns: a list of them, a batched array, or a dict of
    batched arrays. Each starts an episode that RLlib's env-to-module pipeline turns into
    the module's input; the module-to-env pipeline turns the module's output into the
    actions an EnvRunner with explore=False sends the env. An old-API-stack snapshot is
    compared with its restored Policy instead (`old_reference`).
    """
    if snapshot.api_stack == "old":
        from rllib_mlflow.rllib.old_reference import old_stack_reference

        return old_stack_reference(snapshot)
    module = restore_rl_module(snapshot)
    module.eval()

    def act(observations: Any) -> tuple[Any, np.ndarray]:
        replay = EnvRunnerReplay(snapshot, module)
        replay.reset(unbatched(observations))
        return replay.act()

    return act


def rllib_batch_reference(
    snapshot: PolicySnapshot, observations: Any
) -> tuple[Any, np.ndarray, np.ndarray]:
    """`rllib_reference` on one batch, with each row's activation scale: the largest
    magnitude among the module's input and the outputs of each of its layers. float32
    rounding grows with it (a CNN on 0-255 pixels differs from another float32
    implementation by more than 1e-5 in absolute terms). One restore serves both."""
    import torch

    if snapshot.api_stack == "old":  # no RLModule to hook: the input's magnitude alone
        from rllib_mlflow.rllib.old_reference import old_stack_inputs

        actions, dist_inputs = rllib_reference(snapshot)(observations)
        inputs = torch.from_numpy(old_stack_inputs(snapshot, observations))
        return actions, dist_inputs, _row_magnitude(inputs)
    from ray.rllib.core.columns import Columns

    module = restore_rl_module(snapshot)
    module.eval()
    replay = EnvRunnerReplay(snapshot, module)
    obs = replay.reset(unbatched(observations))[Columns.OBS]
    # On copies: a module may change its batch in place (Ray's ActionMaskingTorchRLModule
    # pops the keys of its dict observation), and replay.act() reads the same batch next.
    scale = _activation_scale(module, _copied(obs))
    actions, dist_inputs = replay.act()
    return actions, dist_inputs, scale


def _activation_scale(module: Any, obs: Any) -> np.ndarray:
    import torch

    scales = [_row_magnitude(t) for t in (obs.values() if isinstance(obs, dict) else [obs])]
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


def _copied(obs: Any) -> Any:
    """A torch batch (a tensor or a dict of them, nested) with its own containers and tensors."""
    if isinstance(obs, dict):
        return {key: _copied(value) for key, value in obs.items()}
    return obs.clone()


def _row_magnitude(tensor) -> np.ndarray:
    values = tensor.detach().float().abs().reshape(tensor.shape[0], -1)
    return values.max(dim=1).values.numpy() if values.shape[1] else np.zeros(values.shape[0])


def rllib_sequence_reference(
    snapshot: PolicySnapshot,
) -> Callable[[list, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """RLlib's own inference path for a stateful module over whole sequences.

    observations (T lists of B raw observations) and rewards [T, B] (the reward each step's
    action earned) -> (actions [T, B, ...], dist inputs [T, B, ...]). B episodes start at
    the first observations and take a step per row, as an EnvRunner steps them: RLlib's
    connectors carry the module's state and build the history windows (previous actions
    and rewards, stacked frames) from the episodes.
    """
    if snapshot.api_stack == "old":
        from rllib_mlflow.rllib.old_reference import old_stack_sequence_reference

        return old_stack_sequence_reference(snapshot)
    module = restore_rl_module(snapshot)
    module.eval()

    def run(observations: list, rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        replay = EnvRunnerReplay(snapshot, module)
        replay.reset(unbatched(observations[0]))
        all_actions, all_inputs = [], []
        for t in range(len(observations)):
            if t:
                replay.step(unbatched(observations[t]), rewards[t - 1])
            actions, dist_inputs = replay.act()
            all_actions.append(actions)
            all_inputs.append(dist_inputs)
        return np.stack(all_actions), np.stack(all_inputs)

    return run


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


def _gym_space(data: dict[str, Any]):
    from rllib_mlflow.policy.spaces import space_from_json

    return space_from_json(data)
