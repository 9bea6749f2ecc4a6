"""Seeded episodes of registered versions, in one process of `evaluate`'s pool (no Ray).

A `PlayJob` names the versions that act (one, or one per module of a multi-agent
checkpoint), the env as `make_env` takes it, and the episodes; `play` returns each episode's
return (of each agent, in a multi-agent env) and, when asked, the replay of the first.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from rllib_mlflow.envs import EnvLike, is_multi_agent, make_env
from rllib_mlflow.errors import EnvCreationError
from rllib_mlflow.mlflow import loading
from rllib_mlflow.play.replay import Replay, record_replay
from rllib_mlflow.policy.episode import EpisodeActor

ANY_AGENT = "*"  # an agent-to-module mapping that sends every agent to one module


@dataclass(frozen=True)
class PlayJob:
    """One checkpoint's episodes: `uris` by module id (one entry for a single-agent
    version), played in `env` made with `env_config`; episode i from seed `seed + i`."""

    uris: dict[str, str]
    env: EnvLike
    env_config: dict[str, Any]
    episodes: int
    seed: int
    tracking_uri: str | None = None
    max_steps: int | None = None
    agent_to_module: dict[str, str] = field(default_factory=dict)  # multi-agent only
    replay_dir: str | None = None  # record episode 0 there (single-agent envs)


@dataclass(frozen=True)
class Played:
    """Each episode's return; in a multi-agent env, each agent's too (by agent id)."""

    returns: tuple[float, ...]
    agents: dict[str, tuple[float, ...]] = field(default_factory=dict)
    replay: Replay | None = None


def play(job: PlayJob) -> Played:
    """Runs in a worker process: load the versions without Ray and play the episodes."""
    policies = {
        module: loading.load_policy(uri, tracking_uri=job.tracking_uri)
        for module, uri in job.uris.items()
    }
    env = make_env(job.env, job.env_config)
    try:
        if is_multi_agent(env):
            agents = _multi_agent_returns(env, policies, job)
            episodes = zip(*agents.values(), strict=True)
            return Played(tuple(sum(returns) for returns in episodes), agents)
        (policy,) = policies.values()
        returns = tuple(_episode(env, EpisodeActor(policy), job.seed + i, job.max_steps)
                        for i in range(job.episodes))  # fmt: skip
    finally:
        env.close()
    if job.replay_dir is None:
        return Played(returns)
    return Played(returns, replay=_replay(policy, job))


def module_of(agent: str, mapping: dict[str, str], modules: list[str]) -> str | None:
    """The module agent `agent` acts with: the mapping's, else the module of the same id."""
    module = mapping.get(agent) or mapping.get(ANY_AGENT)
    return module or (agent if agent in modules else None)


def _episode(env: Any, actor: EpisodeActor, seed: int, max_steps: int | None) -> float:
    observation, _ = env.reset(seed=seed)
    total, steps, done = 0.0, 0, False
    while not done and (max_steps is None or steps < max_steps):
        action = actor.act(observation, env.observation_space)
        observation, reward, terminated, truncated, _ = env.step(action)
        actor.rewarded(float(reward))
        total, steps, done = total + float(reward), steps + 1, terminated or truncated
    return total


def _multi_agent_returns(env: Any, policies: dict, job: PlayJob) -> dict[str, tuple[float, ...]]:
    """Each agent's return in each episode, every agent acting with its module's version."""
    returns: dict[str, list[float]] = defaultdict(lambda: [0.0] * job.episodes)
    for episode in range(job.episodes):
        for agent, total in _multi_agent_episode(env, policies, job, episode).items():
            returns[agent][episode] = total
    return {agent: tuple(values) for agent, values in sorted(returns.items())}


def _multi_agent_episode(env: Any, policies: dict, job: PlayJob, episode: int) -> dict:
    observations, _ = env.reset(seed=job.seed + episode)
    actors: dict[str, EpisodeActor] = {}
    totals: dict[str, float] = defaultdict(float)
    steps, done = 0, False
    while not done and (job.max_steps is None or steps < job.max_steps):
        actions = {}
        for agent, observation in observations.items():
            if agent not in actors:  # an agent may join mid-episode: a fresh state
                actors[agent] = EpisodeActor(policies[_module(agent, policies, job)])
            actions[agent] = actors[agent].act(observation, _space(env, agent))
        observations, rewards, terminated, truncated, _ = env.step(actions)
        for agent, reward in rewards.items():
            totals[agent] += float(reward)
            if agent in actors:
                actors[agent].rewarded(float(reward))
        steps += 1
        done = bool(terminated.get("__all__") or truncated.get("__all__"))
    return dict(totals)


def _module(agent: str, policies: dict, job: PlayJob) -> str:
    module = module_of(str(agent), job.agent_to_module, list(policies))
    if module is None or module not in policies:  # the driver checked the declared agents
        raise EnvCreationError(
            f"Agent {agent!r} maps to no module of {sorted(policies)}: pass "
            f"--agent-module {agent}=MODULE (agent_modules= in Python)."
        )
    return module


def _space(env: Any, agent: str) -> Any:
    spaces = getattr(env, "observation_spaces", None) or {}
    return spaces.get(agent)


def _replay(policy: Any, job: PlayJob) -> Replay:
    """The replay of episode 0; a failure to record it fails only the replay."""
    directory = str(job.replay_dir)
    os.makedirs(directory, exist_ok=True)
    try:
        return record_replay(policy, job.env, directory, env_config=job.env_config,
                             seed=job.seed, max_steps=job.max_steps or 1000)  # fmt: skip
    except Exception as error:
        return Replay(None, skipped=f"recording failed ({type(error).__name__}: {error})")
