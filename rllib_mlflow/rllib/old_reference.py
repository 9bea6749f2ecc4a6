"""RLlib's own inference path for an old-API-stack snapshot, for the parity checks.

The restored Policy acts as `Algorithm.compute_single_action(obs, explore=False)` does:
its MeanStdFilter connector (statistics not updated), `compute_actions(explore=False)`,
then RLlib's unsquash (normalize_actions) or clip (clip_actions) of each action. It gets
observations as the graphs take them, i.e. after RLlib's preprocessor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rllib_mlflow.rllib.old_stack import quiet_tensorflow, restore_policy
from rllib_mlflow.rllib.snapshot import PolicySnapshot


def old_stack_reference(snapshot: PolicySnapshot) -> Callable[[Any], tuple[Any, np.ndarray]]:
    """Raw (preprocessed) observations -> (actions, action_dist_inputs), as RLlib acts."""
    from ray.rllib.connectors.agent.mean_std_filter import MeanStdObservationFilterAgentConnector
    from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

    policy = restore_policy(snapshot.module_dir)
    filters = policy.agent_connectors[MeanStdObservationFilterAgentConnector] or []
    obs_filter = filters[0].filter if filters else None
    space = policy.action_space_struct

    def act(observations: Any) -> tuple[Any, np.ndarray]:
        batch = [np.asarray(o, np.float32) for o in observations]
        if obs_filter is not None:
            batch = [obs_filter(o, update=False) for o in batch]
        with quiet_tensorflow():
            actions, _, extra = policy.compute_actions(np.stack(batch), explore=False)
        if policy.config.get("normalize_actions"):
            actions = np.stack([unsquash_action(a, space) for a in actions])
        elif policy.config.get("clip_actions"):
            actions = np.stack([clip_action(a, space) for a in actions])
        return np.asarray(actions), np.asarray(extra["action_dist_inputs"], np.float32)

    return act


def old_stack_torch_model(snapshot: PolicySnapshot):
    """The torch policy's own ModelV2 as a module: preprocessed observations ->
    action_dist_inputs (what ONNX traces)."""
    import torch

    model = restore_policy(snapshot.module_dir).model
    model.eval()

    class DistInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, observations):
            # fcnet reads "obs_flat", visionnet "obs"; both are the preprocessed batch.
            inputs = {"obs": observations, "obs_flat": observations.reshape(len(observations), -1)}
            return self.model(inputs, [], None)[0]

    return DistInputs()
