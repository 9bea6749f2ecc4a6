"""RLlib's own inference path for an old-API-stack snapshot, for the parity checks.

The restored Policy acts as `Algorithm.compute_single_action(obs, explore=False)` does:
its MeanStdFilter connector (statistics not updated), `compute_actions(explore=False)`,
then RLlib's unsquash (normalize_actions) or clip (clip_actions) of each action. It gets
raw observations, which RLlib's old-stack preprocessor (one-hot, flatten) turns into the
model's input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from rllib_mlflow.rllib.old_stack import quiet_tensorflow, restore_policy
from rllib_mlflow.rllib.snapshot import PolicySnapshot

if TYPE_CHECKING:
    import torch


def old_stack_reference(snapshot: PolicySnapshot) -> Callable[[Any], tuple[Any, np.ndarray]]:
    """Raw observations -> (actions, action_dist_inputs), as RLlib acts."""
    step = _policy_step(restore_policy(snapshot.module_dir))
    return lambda observations: step(old_stack_inputs(snapshot, observations), [])[:2]


def old_stack_inputs(snapshot: PolicySnapshot, observations: Any) -> np.ndarray:
    """Raw observations (a list, a batched array or a dict of batched arrays) as RLlib's
    old-stack preprocessor turns them into the model's input."""
    from ray.rllib.models.preprocessors import get_preprocessor

    from rllib_mlflow.policy.spaces import space_from_json
    from rllib_mlflow.rllib.pipelines import unbatched

    space = space_from_json(snapshot.observation_space)
    preprocessor = get_preprocessor(space)(space, snapshot.model_config)
    rows = [preprocessor.transform(o) for o in unbatched(observations)]
    return np.stack(rows).astype(np.float32)


def old_stack_sequence_reference(
    snapshot: PolicySnapshot,
) -> Callable[[list, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A recurrent policy over whole sequences: raw observations (T batches of B) and the
    rewards each step's action earned [T, B] -> (actions [T, B, ...], dist inputs). The
    state starts at the model's `get_initial_state()` and is carried from step to step, as
    `Algorithm.compute_single_action(obs, state=state, prev_action=..., prev_reward=...,
    explore=False)` carries it; the previous action and reward (read by an LSTM with
    lstm_use_prev_action/reward) start as RLlib's sampler pads them: action 0, reward 0."""
    policy = restore_policy(snapshot.module_dir)
    step = _policy_step(policy)
    initial = [np.asarray(s, np.float32) for s in policy.get_initial_state()]
    model = policy.config.get("model", {})
    reads = {
        "prev_actions": bool(model.get("lstm_use_prev_action")),
        "prev_rewards": bool(model.get("lstm_use_prev_reward")),
    }

    def run(observations: list, rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = rewards.shape[1]
        state = [np.tile(s, (batch, 1)) for s in initial]
        prev = {"prev_actions": np.zeros(batch, np.int64), "prev_rewards": np.zeros(batch)}
        all_actions, all_inputs = [], []
        for obs, reward in zip(observations, rewards):
            extra = {k: v for k, v in prev.items() if reads[k]}
            actions, dist_inputs, state = step(old_stack_inputs(snapshot, obs), state, extra)
            prev = {"prev_actions": actions, "prev_rewards": np.asarray(reward, np.float32)}
            all_actions.append(actions)
            all_inputs.append(dist_inputs)
        return np.stack(all_actions), np.stack(all_inputs)

    return run


def _policy_step(policy) -> Callable[..., tuple[np.ndarray, np.ndarray, list]]:
    """(observations, state batches, extra input columns) -> (actions, dist inputs, next
    state), with the policy's MeanStdFilter (update off) before and unsquash/clip after, as
    RLlib acts. Extra columns (prev_actions, prev_rewards) are only for stateful policies."""
    from ray.rllib.connectors.agent.mean_std_filter import MeanStdObservationFilterAgentConnector
    from ray.rllib.policy.sample_batch import SampleBatch
    from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

    filters = policy.agent_connectors[MeanStdObservationFilterAgentConnector] or []
    obs_filter = filters[0].filter if filters else None
    space = policy.action_space_struct

    def step(
        observations: Any, state: list, extra: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray, list]:
        batch = [np.asarray(o, np.float32) for o in observations]
        if obs_filter is not None:
            batch = [np.asarray(obs_filter(o, update=False)) for o in batch]
        with quiet_tensorflow():
            if state:  # as compute_single_action(obs, state=...) passes it (compute_actions'
                # state_batches is broken for TF2 policies in Ray 2.60)
                columns = {"obs": np.stack(batch)} | _state_in(state) | (extra or {})
                inputs = SampleBatch(columns)
                actions, state_out, info = policy.compute_actions_from_input_dict(
                    inputs, explore=False
                )
            else:
                actions, state_out, info = policy.compute_actions(np.stack(batch), explore=False)
        if policy.config.get("normalize_actions"):
            actions = np.stack([np.asarray(unsquash_action(a, space)) for a in actions])
        elif policy.config.get("clip_actions"):
            actions = np.stack([np.asarray(clip_action(a, space)) for a in actions])
        dist_inputs = np.asarray(info["action_dist_inputs"], np.float32)
        return np.asarray(actions), dist_inputs, [np.asarray(s, np.float32) for s in state_out]

    return step


def _state_in(state: list) -> dict[str, np.ndarray]:
    return {f"state_in_{i}": s for i, s in enumerate(state)}


def old_stack_torch_model(snapshot: PolicySnapshot) -> torch.nn.Module:
    """The torch policy's own ModelV2 as a module: preprocessed observations ->
    action_dist_inputs (what ONNX traces)."""
    import torch

    policy = restore_policy(snapshot.module_dir)
    model = policy.model
    model.eval()
    dist_inputs = _torch_dist_inputs(policy)

    class DistInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, observations):
            # fcnet reads "obs_flat", visionnet "obs"; both are the preprocessed batch.
            inputs = {"obs": observations, "obs_flat": observations.reshape(len(observations), -1)}
            return dist_inputs(inputs)

    return DistInputs()


def _torch_dist_inputs(policy) -> Callable[[dict], torch.Tensor]:
    """How the torch policy computes its action distribution's inputs from an input dict:
    DQN's Q-values by RLlib's own `compute_q_values` (dueling included), SAC's policy
    network after the model's pass-through forward, else the model's output."""
    from ray.rllib.algorithms.dqn.dqn_torch_model import DQNTorchModel
    from ray.rllib.algorithms.sac.sac_torch_model import SACTorchModel

    model = policy.model
    if isinstance(model, DQNTorchModel):
        from ray.rllib.algorithms.dqn.dqn_torch_policy import compute_q_values

        return lambda inputs: compute_q_values(policy, model, inputs, explore=False)[0]
    if isinstance(model, SACTorchModel):
        return lambda inputs: model.get_action_model_outputs(model(inputs, [], None)[0])[0]
    return lambda inputs: model(inputs, [], None)[0]
