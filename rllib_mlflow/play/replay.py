"""A replay: one seeded episode of a policy, rendered by its environment, as a small GIF.

Plays without Ray: the policy is an exported one (`rllib_mlflow.policy.serving.Policy`, from
`load_policy` or an export directory), the environment a gymnasium one made with
``render_mode="rgb_array"``. Environments that cannot render that way (no such mode, or a
missing renderer such as pygame for the classic-control envs) are skipped, and the
reason is returned for the model card. `record_and_attach` does the same for a version just
registered, so that the mlflow tier only attaches replays and never plays an environment.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rllib_mlflow import names
from rllib_mlflow.mlflow import card
from rllib_mlflow.policy.episode import EpisodeActor

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from rllib_mlflow.policy.serving import Policy

logger = logging.getLogger(__name__)

MAX_FRAMES = 200  # longer episodes keep every 2nd, 4th... frame: a small file either way
WIDTH = 320


@dataclass(frozen=True)
class Replay:
    """What recording a replay gave: the GIF, or why there is none."""

    path: Path | None
    skipped: str | None = None  # the reason, when the env cannot render
    episode_return: float | None = None
    steps: int = 0


def record_replay(
    policy: Policy,
    env_id: str,
    directory: str | os.PathLike,
    *,
    seed: int = 0,
    max_steps: int = 1000,
) -> Replay:
    """Play one episode from `env.reset(seed=seed)` and write it to `directory`/replay.gif."""
    env, reason = _rendering_env(env_id)
    if env is None:
        logger.warning("No replay for %s: %s", env_id, reason)
        return Replay(None, skipped=reason)
    try:
        frames, stride, total, steps = _play(policy, env, seed, max_steps)
        fps = float(env.metadata.get("render_fps") or 30)
    finally:
        env.close()
    path = Path(directory) / names.REPLAY_FILE
    _write_gif(frames, path, frame_ms=1000.0 * stride / fps)
    return Replay(path, episode_return=total, steps=steps)


def record_and_attach(
    mlflow_client: MlflowClient,
    name: str,
    number: int | str,
    export_dir: str | os.PathLike,
    *,
    seed: int = 0,
) -> None:
    """Record a replay with the exported policy in `export_dir` (no Ray) and attach it to
    version `number`. A failure is logged, never raised: the version is registered, and
    its card says there is no replay."""
    try:
        from rllib_mlflow.policy.serving import Policy

        policy = Policy(str(export_dir))
        with tempfile.TemporaryDirectory(prefix="rllib_mlflow_replay_") as directory:
            replay = record_replay(policy, policy.metadata["env_id"], directory, seed=seed)
            card.attach_replay(mlflow_client, name, number, replay, seed=seed)
    except Exception as error:
        logger.warning("No replay for %s version %s: %s", name, number, error)


def _rendering_env(env_id: str):
    """(env, None) when `env_id` renders RGB frames, else (None, why not)."""
    # pygame (the classic-control renderer) greets on import and opens an audio device.
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import gymnasium as gym

    try:
        env = gym.make(env_id, render_mode="rgb_array")
        env.reset(seed=0)
        frame = env.render()
    except Exception as error:  # unknown env, no rgb_array mode, renderer not installed
        return None, f"{env_id} cannot render rgb_array frames ({type(error).__name__}: {error})"
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        env.close()
        return None, f"{env_id} renders no RGB image (got {type(frame).__name__})"
    return env, None


def _play(policy, env, seed: int, max_steps: int):
    observation, _ = env.reset(seed=seed)
    actor = EpisodeActor(policy)
    frames, stride, total, steps, done = [_small(env.render())], 1, 0.0, 0, False
    while not done and steps < max_steps:
        action = actor.act(observation, env.observation_space)
        observation, reward, terminated, truncated, _ = env.step(action)
        actor.rewarded(reward)
        total, steps, done = total + float(reward), steps + 1, terminated or truncated
        if steps % stride == 0:
            frames.append(_small(env.render()))
        if len(frames) > MAX_FRAMES:  # keep memory and file size bounded
            frames, stride = frames[::2], stride * 2
    return frames, stride, total, steps


def _small(frame: np.ndarray):
    from PIL import Image

    image = Image.fromarray(np.asarray(frame, dtype=np.uint8))
    if image.width > WIDTH:
        image = image.resize((WIDTH, round(image.height * WIDTH / image.width)))
    return image.quantize(colors=64)


def _write_gif(frames: list, path: Path, frame_ms: float) -> None:
    frames[0].save(
        path,
        save_all=True,
        append_images=frames[1:],
        duration=max(20, round(frame_ms)),
        loop=0,
        optimize=True,
    )
