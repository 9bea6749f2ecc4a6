"""A multi-agent env class configured by env_config: two agents ("a0", "a1"), each walking its
own `Corridor`; the episode ends when both have. Agents map to modules "m0" and "m1" by a
function (`to_module`), as RLlib configs do: code, which evaluation does not run."""

from __future__ import annotations

from typing import Any

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


def to_module(agent_id: str, episode: Any = None, **kwargs: Any) -> str:
    """Agent "a0" acts with module "m0", "a1" with "m1"."""
    return "m" + str(agent_id)[-1]
