"""A multi-agent env class configured by env_config: two agents ("a0", "a1"), each walking its
own `Corridor`; the episode ends when both have. Agents map to modules "m0" and "m1" by a
function (`to_module`), as RLlib configs do: code, which evaluation does not run. The same
env as a PettingZoo ParallelEnv, as PettingZoo users have it."""

from __future__ import annotations

from typing import Any

from pettingzoo import ParallelEnv
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from tests.custom_envs import Corridor

AGENTS = ("a0", "a1")


class TwoCorridors(MultiAgentEnv):
    def __init__(self, config: dict | None = None):
        super().__init__()
        self._envs = {agent: Corridor(config) for agent in AGENTS}
        self.possible_agents = list(AGENTS)
        self.agents = list(AGENTS)
        self.observation_spaces = {a: e.observation_space for a, e in self._envs.items()}
        self.action_spaces = {a: e.action_space for a, e in self._envs.items()}
        self._done: set[str] = set()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._done, self.agents = set(), list(AGENTS)
        observations, infos = {}, {}
        for i, (agent, env) in enumerate(self._envs.items()):
            seeded = None if seed is None else seed + i
            observations[agent], infos[agent] = env.reset(seed=seeded)
        return observations, infos

    def step(self, action_dict: dict[str, Any]):
        observations, rewards, terminateds, truncateds = {}, {}, {}, {}
        for agent, action in action_dict.items():
            obs, reward, terminated, truncated, _ = self._envs[agent].step(action)
            observations[agent], rewards[agent] = obs, reward
            terminateds[agent], truncateds[agent] = terminated, truncated
            if terminated or truncated:
                self._done.add(agent)
        self.agents = [a for a in AGENTS if a not in self._done]
        terminateds["__all__"] = len(self._done) == len(AGENTS)
        truncateds["__all__"] = False
        return observations, rewards, terminateds, truncateds, {}


class ParallelTwoCorridors(ParallelEnv):
    """The same two corridors as a PettingZoo ParallelEnv (what a PettingZoo user has):
    `make_env` wraps it in RLlib's ParallelPettingZooEnv. Seeded alike, it plays the same
    episodes as `TwoCorridors`."""

    metadata: dict[str, Any] = {"name": "parallel_two_corridors_v0"}

    def __init__(self, config: dict | None = None):
        self._inner = TwoCorridors(config)
        self.possible_agents = list(AGENTS)
        self.agents = list(AGENTS)

    def observation_space(self, agent):
        return self._inner.observation_spaces[agent]

    def action_space(self, agent):
        return self._inner.action_spaces[agent]

    def reset(self, seed=None, options=None):
        observations, infos = self._inner.reset(seed=seed, options=options)
        self.agents = list(self._inner.agents)
        return observations, infos

    def step(self, actions):
        observations, rewards, terminateds, truncateds, _ = self._inner.step(actions)
        del terminateds["__all__"], truncateds["__all__"]
        self.agents = list(self._inner.agents)
        return observations, rewards, terminateds, truncateds, {a: {} for a in rewards}


def to_module(agent_id: str, episode: Any = None, **kwargs: Any) -> str:
    """Agent "a0" acts with module "m0", "a1" with "m1"."""
    return "m" + str(agent_id)[-1]
