"""Acting through one environment episode with a loaded policy, stateful or not.

`evaluate` and the replays play episodes without Ray. A stateless policy answers each
observation alone; a stateful one (an LSTM, previous actions and rewards, stacked frames)
carries its state from step to step and is told the reward its previous action earned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .flatten import flatten_observation

if TYPE_CHECKING:
    from .serving import Policy


class EpisodeActor:
    """The actions of one policy through one episode: make a new one per episode."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.flatten = any(s["type"] == "flatten" for s in policy.metadata["preprocessing"])
        self.state = policy.initial_state(1) if policy.is_stateful else None
        self.reward = 0.0  # what the previous action earned: nothing before the first

    def act(self, observation: Any, space: Any = None) -> Any:  # space: a gymnasium Space
        """The action for one raw observation (`space`: the env's observation space, for
        the observations RLlib flattens)."""
        if self.flatten and space is not None and not isinstance(observation, dict):
            observation = flatten_observation(
                self.policy.metadata["observation_space"], observation
            )
        batch = observation if isinstance(observation, dict) else np.asarray(observation)[None]
        if self.state is None:
            return self.policy.compute_actions(batch)[0]
        actions, self.state = self.policy.step(batch, self.state, prev_rewards=[self.reward])
        return actions[0]

    def rewarded(self, reward: float) -> None:
        self.reward = float(reward)
