"""Envs as users write them for RLlib, not registered with gymnasium: a class configured by
env_config, a factory, and a name registered with `tune.register_env` and a lambda.

Evaluation workers import this module to make the env (`tests.custom_envs:Corridor`): it
imports no Ray; `register()` registers the Tune name in the training process.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

REGISTERED = "corridor-registered"  # the Tune name, registered with a lambda


class Corridor(gym.Env):
    """Walk right to the end of a corridor of `env_config["width"]` cells (required: the
    observation width comes from the config, so the env cannot be made without it).

    Observation: Box(0, 1, (width,)), the one-hot of the cell. Action: Discrete(2), left or
    right. Reward 1 at the end (which ends the episode), -0.05 a step; at most `max_steps`
    (default 12) steps. Starts in a random cell of the left half."""

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, config: dict | None = None):
        config = dict(config or {})
        self.width = int(config["width"])
        self.max_steps = int(config.get("max_steps", 12))
        self.render_mode = config.get("render_mode")
        self.observation_space = spaces.Box(0.0, 1.0, (self.width,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._cell, self._t = 0, 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.width, np.float32)
        obs[self._cell] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._cell, self._t = int(self.np_random.integers(0, max(1, self.width // 2))), 0
        return self._obs(), {}

    def step(self, action):
        self._cell = int(np.clip(self._cell + (1 if int(action) == 1 else -1), 0, self.width - 1))
        self._t += 1
        arrived = self._cell == self.width - 1
        reward = 1.0 if arrived else -0.05
        return self._obs(), reward, arrived, self._t >= self.max_steps, {}

    def render(self):
        """A 16-pixel-high strip, the walker's cell white."""
        image = np.zeros((16, 16 * self.width, 3), np.uint8)
        image[:, 16 * self._cell : 16 * (self._cell + 1)] = 255
        return image


def make_corridor(config: dict | None = None) -> Corridor:
    """A factory, as `--env tests.custom_envs:make_corridor` names it."""
    return Corridor(config)


def play(policy, config: dict, episodes: int, seed: int) -> list[float]:
    """Each episode's return of `policy` (a loaded version) in Corridor(config)."""
    return episode_returns(policy, Corridor(config), episodes, seed)


def episode_returns(policy, env: gym.Env, episodes: int, seed: int) -> list[float]:
    """Each episode's return of `policy` in `env`, reset with seed, seed + 1, ...: what
    `evaluate` must report."""
    returns = []
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            action = policy.compute_actions(np.asarray(observation)[None])[0]
            observation, reward, terminated, truncated, _ = env.step(action)
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return returns


def register() -> None:
    """Register REGISTERED with Ray Tune, with a lambda as users often do (idempotent)."""
    from ray.tune.registry import register_env

    register_env(REGISTERED, lambda config: Corridor(config))
