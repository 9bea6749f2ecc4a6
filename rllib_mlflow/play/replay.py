"""A replay: one seeded episode of a policy, rendered by its environment, as a small GIF.

Plays without Ray: the policy is an exported one (`rllib_mlflow.policy.serving.Policy`, from
`load_policy` or an export directory), the environment made as `evaluate` makes it
(`rllib_mlflow.envs.make_env`: a gymnasium id, an env class or factory with its env_config)
with ``render_mode="rgb_array"``. Environments that cannot render that way (no such mode, or a
missing renderer such as pygame for the classic-control envs) are skipped, and the
reason is returned for the model card. `record_and_attach` does the same for a version just
registered, so that the mlflow tier only attaches replays and never plays an environment.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rllib_mlflow import names
from rllib_mlflow.envs import EnvLike, describe, is_multi_agent, make_env, recorded
from rllib_mlflow.errors import EnvCreationError
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
    env: EnvLike,
    directory: str | os.PathLike,
    *,
    env_config: Mapping[str, Any] | None = None,
    seed: int = 0,
    max_steps: int = 1000,
) -> Replay:
    """Play one episode from `env.reset(seed=seed)` in `env` (what `make_env` takes, with
    `env_config`) and write it to `directory`/replay.gif."""
    made, reason = _rendering_env(env, env_config)
    if made is None:
        logger.warning("No replay for %s: %s", describe(env), reason)
        return Replay(None, skipped=reason)
    try:
        frames, stride, total, steps = _play(policy, made, seed, max_steps)
        fps = float(made.metadata.get("render_fps") or 30)
    finally:
        made.close()
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
            env, config = recorded(policy.metadata.get("env"), policy.metadata["env_id"])
            if env is None:
                raise EnvCreationError("the checkpoint records no env")
            replay = record_replay(policy, env, directory, env_config=config, seed=seed)
            card.attach_replay(mlflow_client, name, number, replay, seed=seed)
    except Exception as error:
        logger.warning("No replay for %s version %s: %s", name, number, error)


def _rendering_env(env: EnvLike, env_config: Mapping[str, Any] | None):
    """(env, None) when `env` renders RGB frames, else (None, why not)."""
    # pygame (the classic-control renderer) greets on import and opens an audio device.
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    name = describe(env)
    try:
        made = make_env(env, env_config, render_mode="rgb_array")
    except EnvCreationError as error:  # its message says what to pass
        return None, str(error)
    except Exception as error:  # the env's own failure, e.g. a renderer not installed
        return None, f"{name} cannot be made ({type(error).__name__}: {error})"
    if is_multi_agent(made):
        made.close()
        return None, f"{name} is a multi-agent env (replays are of single-agent envs)"
    try:
        made.reset(seed=0)
        frame = made.render()
    except Exception as error:  # no rgb_array mode, renderer not installed
        made.close()
        return None, f"{name} cannot render rgb_array frames ({type(error).__name__}: {error})"
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        made.close()
        return None, f"{name} renders no RGB image (got {type(frame).__name__})"
    return made, None


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
