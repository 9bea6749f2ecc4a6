"""Evaluate registered versions in their environment, without Ray, and compare them.

Each selected version is loaded with `load_policy` and plays N seeded episodes in
gymnasium (episode i of every version uses seed `seed + i`, so versions face the same
starts), in parallel across the machine's cores. Results become version tags
(`eval.episode_return_mean`, ...), metrics of an evaluation run at
step = training iteration, and a plot of evaluation and training return against the
training iteration. With `video`, the first episode of each version is also recorded as
a replay (replay.gif with the version's LoggedModel). The versions' cards and the
registered model's card are rewritten with the new facts.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rllib_mlflow import names
from rllib_mlflow.errors import RegistryError
from rllib_mlflow.mlflow import card, loading, runs
from rllib_mlflow.mlflow.client import check_tracking_server, client
from rllib_mlflow.mlflow.registry_client import RegistryClient
from rllib_mlflow.mlflow.versions import find_version, find_versions
from rllib_mlflow.play import plot
from rllib_mlflow.play.replay import Replay, record_replay
from rllib_mlflow.policy.episode import EpisodeActor

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

EVAL_EXPERIMENT = "rllib-mlflow-evaluation"


@dataclass(frozen=True)
class VersionEvaluation:
    version: int
    training_iteration: int | None
    trial: str | None
    training_return: float | None
    returns: tuple[float, ...]
    replay: str | None = None  # the `replay` tag: "replay.gif" or "skipped: <why>"

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    def summary(self) -> dict[str, float]:
        returns = np.asarray(self.returns)
        return {
            "episode_return_mean": float(returns.mean()),
            "episode_return_std": float(returns.std()),
            "episode_return_min": float(returns.min()),
            "episode_return_max": float(returns.max()),
        }


@dataclass(frozen=True)
class EvaluationReport:
    """What `evaluate` did: each version's results, the evaluation run, the best version."""

    registered_model: str
    env_id: str
    run_id: str
    best_version: int
    versions: list[VersionEvaluation] = field(default_factory=list)


# Called with (done, total, what) before the first and after each version.
Progress = Callable[[int, int, str], None]


def evaluate(
    name: str,
    env_id: str | None = None,
    *,
    episodes: int = 10,
    versions: list[str] | None = None,
    seed: int = 0,
    tracking_uri: str | None = None,
    workers: int | None = None,
    move_alias: bool = False,
    max_steps: int | None = None,
    video: bool = False,
    on_progress: Progress | None = None,
) -> EvaluationReport:
    """Evaluate versions of `name` (all, or the given numbers/aliases) in `env_id`.

    With `video`, each version's first episode (seed `seed`) is recorded from the env's
    rgb_array render as replay.gif with its LoggedModel; envs that cannot render are
    skipped, and the card says why."""
    mlflow_client = client(tracking_uri)
    check_tracking_server(mlflow_client)
    selected = _select(mlflow_client, name, versions)
    env_id = env_id or selected[0].tags.get(names.VERSION_TAG_ENV_ID)
    if not env_id:
        raise RegistryError("Pass --env ENV_ID: the versions do not record their env.")
    progress = on_progress or (lambda done, total, what: None)
    with tempfile.TemporaryDirectory(prefix="rllib_mlflow_replays_") as replays:
        jobs = [
            (name, int(v.version), env_id, episodes, seed, tracking_uri, max_steps)
            + ((str(Path(replays, str(v.version))),) if video else (None,))
            for v in selected
        ]
        results = _play_all(jobs, workers, progress)
        if video:
            _attach_replays(mlflow_client, name, results, seed)
    evaluations = [_evaluation(v, *results[int(v.version)]) for v in selected]
    run_id, best = _record(mlflow_client, name, env_id, episodes, seed, evaluations, move_alias)
    _rewrite_cards(mlflow_client, name, evaluations)
    return EvaluationReport(name, env_id, run_id, best.version, evaluations)


def _play_all(jobs: list[tuple], workers: int | None, progress: Progress) -> dict[int, tuple]:
    """Run `_play` for each job in a pool of processes; results by version number."""
    context = multiprocessing.get_context("spawn")
    results: dict[int, tuple] = {}
    progress(0, len(jobs), "")
    with concurrent.futures.ProcessPoolExecutor(
        workers or os.cpu_count(), mp_context=context
    ) as pool:
        futures = {pool.submit(_play, *job): job[1] for job in jobs}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            number = futures[future]
            results[number] = future.result()
            returns = results[number][0]
            logger.info(
                "[%d/%d] version %s: return %.1f ± %.1f",
                done,
                len(jobs),
                number,
                np.mean(returns),
                np.std(returns),
            )
            progress(done, len(jobs), f"version {number}")
    return results


def _attach_replays(
    mlflow_client: MlflowClient, name: str, results: dict[int, tuple], seed: int
) -> None:
    for number, (_, replay) in sorted(results.items()):
        card.attach_replay(mlflow_client, name, number, replay, seed=seed)


def _rewrite_cards(
    mlflow_client: MlflowClient, name: str, evaluations: list[VersionEvaluation]
) -> None:
    """The evaluation changed the facts: rewrite the evaluated versions' and the family card."""
    try:
        for evaluation in evaluations:
            card.publish_version_card(mlflow_client, name, evaluation.version)
        card.publish_family_card(mlflow_client, name)
    except Exception as error:  # the results are recorded; a stale card is not fatal
        logger.warning("Could not rewrite the model cards of %s: %s", name, error)


def _select(mlflow_client: RegistryClient, name: str, wanted: list[str] | None) -> list:
    if not wanted:
        found = find_versions(mlflow_client, name)
        if not found:
            raise RegistryError(f"{name!r} has no registered versions.")
        return sorted(found, key=lambda v: int(v.version))
    chosen = []
    for item in wanted:
        uri = f"models:/{name}@{item}" if not str(item).isdigit() else f"models:/{name}/{item}"
        chosen.append(find_version(uri, tracking_uri=mlflow_client.tracking_uri))
    return chosen


def _play(
    name: str,
    version: int,
    env_id: str,
    episodes: int,
    seed: int,
    tracking_uri: str | None,
    max_steps: int | None,
    replay_dir: str | None = None,
) -> tuple[tuple[float, ...], Replay | None]:
    """Runs in a worker process: load the version without Ray and play seeded episodes
    (and record the first one in `replay_dir`, if given)."""
    import gymnasium as gym

    policy = loading.load_policy(f"models:/{name}/{version}", tracking_uri=tracking_uri)
    env = gym.make(env_id)
    returns = []
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        actor = EpisodeActor(policy)
        total, steps, done = 0.0, 0, False
        while not done and (max_steps is None or steps < max_steps):
            action = actor.act(observation, env.observation_space)
            observation, reward, terminated, truncated, _ = env.step(action)
            actor.rewarded(float(reward))
            total += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(total)
    env.close()
    if replay_dir is None:
        return tuple(returns), None
    return tuple(returns), _replay(policy, env_id, replay_dir, seed, max_steps or 1000)


def _replay(policy, env_id: str, directory: str, seed: int, max_steps: int) -> Replay:
    """The replay of episode 0; a failure to record it fails only the replay."""
    os.makedirs(directory, exist_ok=True)
    try:
        return record_replay(policy, env_id, directory, seed=seed, max_steps=max_steps)
    except Exception as error:
        return Replay(None, skipped=f"recording failed ({type(error).__name__}: {error})")


def _evaluation(version, returns: tuple[float, ...], replay: Replay | None) -> VersionEvaluation:
    tags = version.tags
    iteration = tags.get(names.VERSION_TAG_ITERATION)
    training_return = tags.get("episode_return_mean")
    return VersionEvaluation(
        version=int(version.version),
        training_iteration=None if iteration is None else int(iteration),
        trial=tags.get(names.VERSION_TAG_TRIAL_NAME) or tags.get(names.VERSION_TAG_TRIAL_ID),
        training_return=None if training_return is None else float(training_return),
        returns=returns,
        replay=None if replay is None else _replay_tag(replay),
    )


def _replay_tag(replay: Replay) -> str:
    return names.REPLAY_FILE if replay.path is not None else f"skipped: {replay.skipped}"


def _record(mlflow_client: MlflowClient, name, env_id, episodes, seed, evaluations, move_alias):
    """Version tags, an evaluation run with metrics and the plot, and the eval-best alias."""
    from mlflow.entities import Metric

    for evaluation in evaluations:
        number = str(evaluation.version)
        for key, value in evaluation.summary().items():
            tag = f"{names.VERSION_TAG_EVAL_PREFIX}{key}"
            mlflow_client.set_model_version_tag(name, number, tag, f"{value:.6g}")
        mlflow_client.set_model_version_tag(
            name, number, names.VERSION_TAG_EVAL_EPISODES, str(episodes)
        )
        mlflow_client.set_model_version_tag(name, number, names.VERSION_TAG_EVAL_ENV_ID, env_id)
        mlflow_client.set_model_version_tag(name, number, names.VERSION_TAG_EVAL_SEED, str(seed))
    run = mlflow_client.create_run(
        runs.experiment_id(mlflow_client, EVAL_EXPERIMENT),
        run_name=f"evaluate-{name}",
        tags={"registered_model": name},
    )
    run_id = run.info.run_id
    mlflow_client.log_batch(run_id, params=_params(name, env_id, episodes, seed))
    metrics = []
    for evaluation in evaluations:
        step = evaluation.training_iteration or 0
        for key, value in evaluation.summary().items():
            metrics.append(Metric(f"eval/{key}", value, 0, step))
    runs.log_metric_batches(mlflow_client, run_id, metrics)
    best = max(evaluations, key=lambda e: e.mean)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, f"evaluation_{name}.png")
        plot.plot_returns(
            evaluations,
            name,
            env_id,
            path,
            best_version=_alias_version(mlflow_client, name, names.ALIAS_BEST),
        )
        mlflow_client.log_artifact(run_id, path)
        with open(os.path.join(directory, "evaluation.json"), "w") as stream:
            import json

            json.dump([{**asdict(e), **e.summary()} for e in evaluations], stream, indent=2)
        mlflow_client.log_artifact(run_id, os.path.join(directory, "evaluation.json"))
    mlflow_client.set_terminated(run_id)
    if move_alias:
        mlflow_client.set_registered_model_alias(name, names.ALIAS_EVAL_BEST, str(best.version))
    logger.info(
        "best version %s (return %.1f); evaluation run %s in experiment %r",
        best.version,
        best.mean,
        run_id,
        EVAL_EXPERIMENT,
    )
    return run_id, best


def _params(name, env_id, episodes, seed) -> list:
    from mlflow.entities import Param

    values = {"registered_model": name, "env_id": env_id, "episodes": episodes, "seed": seed}
    return [Param(k, str(v)) for k, v in values.items()]


def _alias_version(mlflow_client: RegistryClient, name: str, alias: str) -> int | None:
    aliases = mlflow_client.get_registered_model(name).aliases
    return int(aliases[alias]) if alias in aliases else None
