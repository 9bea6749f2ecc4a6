"""Observations from real episodes, and RLlib's own actions for them, to compare exports to."""

from __future__ import annotations

import numpy as np


def cartpole_observations(count: int = 64, seed: int = 0) -> np.ndarray:
    """Observations from real CartPole episodes (random actions, seeded)."""
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(seed)
    observations, (obs, _) = [], env.reset(seed=seed)
    while len(observations) < count:
        observations.append(obs)
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(2)))
        if terminated or truncated:
            obs, _ = env.reset()
    return np.asarray(observations, dtype=np.float32)


def rllib_actions(checkpoint_path: str, observations: np.ndarray) -> np.ndarray:
    """What RLlib's module and connectors (explore=False) do with these observations."""
    from rllib_mlflow.rllib.reader import read_snapshots
    from rllib_mlflow.rllib.reference import rllib_reference

    (snapshot,) = read_snapshots(checkpoint_path)
    return np.asarray(rllib_reference(snapshot)(observations)[0])
