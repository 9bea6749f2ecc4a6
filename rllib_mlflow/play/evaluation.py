"""Evaluate registered versions in their environment, without Ray, and compare them.

Each selected version is loaded with `load_policy` and plays N seeded episodes (episode i of
every version uses seed `seed + i`, so versions face the same starts), in parallel across
the machine's cores. The env is made as the version records it (`rllib_mlflow.envs`: a
gymnasium id, an env class or factory with its env_config, a Tune-registered name's creator),
unless `env` / `env_config` say otherwise. A multi-agent family (``NAME-<module_id>``) plays
each checkpoint in its MultiAgentEnv, every agent with its module's version of the same
trial and iteration (`play.family`). Results become version tags (`eval.episode_return_mean`,
...), metrics of an evaluation run at step = training iteration, and a plot
(`play.recording`). With `video`, the first episode of each version is also recorded as a
replay. The versions' cards and the registered model's card are rewritten.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rllib_mlflow import names
from rllib_mlflow.envs import EnvLike, describe, is_multi_agent, make_env
from rllib_mlflow.errors import EnvCreationError, RegistryError
from rllib_mlflow.mlflow.client import check_tracking_server, client, registered_model_exists
from rllib_mlflow.mlflow.registry_client import RegistryClient
from rllib_mlflow.mlflow.stores import shown
from rllib_mlflow.mlflow.versions import find_version, find_versions
from rllib_mlflow.play import family, recording
from rllib_mlflow.play.episodes import Played, PlayJob, module_of, play
from rllib_mlflow.play.recording import EVAL_EXPERIMENT as EVAL_EXPERIMENT
from rllib_mlflow.play.replay import Replay
from rllib_mlflow.redaction import get_logger

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = get_logger(__name__)


@dataclass(frozen=True)
class VersionEvaluation:
    """One version's episodes: its returns (a module's: the sum of its agents' rewards) and,
    in a multi-agent env, each of its agents' returns."""

    version: int
    training_iteration: int | None
    trial: str | None
    training_return: float | None
    returns: tuple[float, ...]
    replay: str | None = None  # the `replay` tag: "replay.gif" or "skipped: <why>"
    registered_model: str | None = None
    module_id: str | None = None
    agents: dict[str, tuple[float, ...]] = field(default_factory=dict)

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
    """What `evaluate` did: each version's results, the evaluation run, the best version
    (of a multi-agent family: `best` and `run_ids` per module's registered model)."""

    registered_model: str
    env_id: str
    run_id: str
    best_version: int
    versions: list[VersionEvaluation] = field(default_factory=list)
    best: dict[str, int] = field(default_factory=dict)
    run_ids: dict[str, str] = field(default_factory=dict)


# Called with (done, total, what) before the first and after each checkpoint.
Progress = Callable[[int, int, str], None]


def evaluate(
    name: str,
    *,
    env: EnvLike | None = None,
    env_config: Mapping[str, Any] | None = None,
    episodes: int = 10,
    versions: list[str] | None = None,
    seed: int = 0,
    tracking_uri: str | None = None,
    workers: int | None = None,
    move_alias: bool = False,
    max_steps: int | None = None,
    video: bool = False,
    agent_modules: Mapping[str, str] | None = None,
    on_progress: Progress | None = None,
) -> EvaluationReport:
    """Play seeded episodes with versions of `name` and record the results.

    Args:
        name: a registered model, or the ``NAME`` of a multi-agent family whose modules
            were registered as ``NAME-<module_id>``.
        env: where to play: a gymnasium id, ``"module:callable"`` or a callable (an env
            class or factory, called with the env config); default: how the versions
            record their env.
        env_config: the config to make the env with; default: the recorded one (its
            secrets were masked when recorded: pass them here).
        episodes: episodes per version; episode i starts from ``env.reset(seed=seed + i)``.
        versions: version numbers or aliases (of a family: of its first module's model);
            default: all.
        agent_modules: agent id -> module id, for a multi-agent env whose mapping was a
            function at training (and where agent ids are not module ids).
        video: record each version's first episode as replay.gif (single-agent envs).
        move_alias: point ``eval-best`` at the version that plays best.
        workers: processes (default: one per core); max_steps: cut episodes at this length.
        tracking_uri: default ``MLFLOW_TRACKING_URI``.

    Returns:
        The per-version results, the evaluation run and the best version, as
        ``rllib-mlflow evaluate`` prints them.
    """
    mlflow_client = client(tracking_uri)
    check_tracking_server(mlflow_client)
    models = _models(mlflow_client, name)
    groups = _checkpoints(mlflow_client, name, models, versions)
    first = next(iter(groups[0].values()))
    make, config, recorded_mapping = _env_to_play(name, first, env, env_config)
    agents = _agents_if_multi_agent(make, config)
    mapping = {} if agents is None else family.agent_mapping(
        agents, list(models), recorded_mapping, dict(agent_modules or {}))  # fmt: skip
    progress = on_progress or (lambda done, total, what: None)
    with tempfile.TemporaryDirectory(prefix="rllib_mlflow_replays_") as replays:
        jobs = [
            PlayJob({module: f"models:/{v.name}/{v.version}" for module, v in group.items()},
                    make, config, episodes, seed, tracking_uri, max_steps, mapping,
                    str(Path(replays, str(i))) if video and agents is None else None)
            for i, group in enumerate(groups)
        ]  # fmt: skip
        played = _play_all(jobs, [_label(g) for g in groups], workers, progress)
        report = _record_models(mlflow_client, models, groups, played, agents, mapping,
                                make, env_config, episodes, seed, move_alias)  # fmt: skip
    return replace(report, registered_model=name)


def _models(mlflow_client: Any, name: str) -> dict[str, str]:
    """Module id -> registered model: `name` itself (its versions' module), else the
    multi-agent family ``NAME-<module_id>``; one line when there is neither."""
    if registered_model_exists(mlflow_client, name):
        found = find_versions(mlflow_client, name)
        if not found:
            raise RegistryError(f"{name!r} has no registered versions.")
        return {found[0].tags.get(names.VERSION_TAG_MODULE_ID) or "default_policy": name}
    members = family.members(mlflow_client, name)
    if not members:
        raise RegistryError(
            f"No registered model {name!r} in {shown(mlflow_client.tracking_uri)}, nor a "
            f"multi-agent family {name}-<module_id>: see `rllib-mlflow versions`."
        )
    return members


def _checkpoints(
    mlflow_client: Any, name: str, models: dict[str, str], wanted: list[str] | None
) -> list[dict[str, Any]]:
    """The checkpoints to play, each as module id -> version: a family's versions of one
    trial and iteration together."""
    chosen = _select(mlflow_client, next(iter(models.values())), wanted)
    if len(models) == 1:
        return [{next(iter(models)): version} for version in chosen]
    groups = family.checkpoints(mlflow_client, models, chosen)
    if not groups:
        raise RegistryError(
            f"No checkpoint of {name!r} has a version of every module ({', '.join(models)}) "
            "of the same trial and iteration: see `rllib-mlflow versions NAME-<module_id>`."
        )
    return groups


def _select(mlflow_client: RegistryClient, name: str, wanted: list[str] | None) -> list:
    if not wanted:
        return sorted(find_versions(mlflow_client, name), key=lambda v: int(v.version))
    chosen = []
    for item in wanted:
        uri = f"models:/{name}@{item}" if not str(item).isdigit() else f"models:/{name}/{item}"
        chosen.append(find_version(uri, tracking_uri=mlflow_client.tracking_uri))
    return chosen


def _env_to_play(
    name: str, version: Any, env: EnvLike | None, env_config: Mapping[str, Any] | None
) -> tuple[EnvLike, dict[str, Any], dict[str, str]]:
    """(env, env_config, agent-to-module mapping): the given ones over the recorded ones."""
    tags = version.tags
    make = env if env is not None else tags.get(names.VERSION_TAG_ENV_MAKE)
    make = make or tags.get(names.VERSION_TAG_ENV_ID)  # versions of earlier releases
    if not make:
        raise EnvCreationError(
            f"The versions of {name!r} record no env: pass --env module:callable (or a "
            "gymnasium id), or env= in Python."
        )
    recorded = json.loads(tags.get(names.VERSION_TAG_ENV_CONFIG) or "{}")
    config = dict(env_config) if env_config is not None else recorded
    mapping = json.loads(tags.get(names.VERSION_TAG_ENV_AGENT_TO_MODULE) or "{}")
    return make, config, mapping


def _agents_if_multi_agent(env: EnvLike, config: dict[str, Any]) -> list[str] | None:
    """Make the env once here, before any worker starts: an env that cannot be made fails
    in one line at once; a multi-agent env's agents are mapped to modules up front."""
    made = make_env(env, config)
    try:
        return family.agent_ids(made) if is_multi_agent(made) else None
    finally:
        made.close()


def _play_all(
    jobs: list[PlayJob], labels: list[str], workers: int | None, progress: Progress
) -> list[Played]:
    """Run `play` for each job in a pool of processes; in this process when there is one job
    (a worker would only add its start: imports, and Ray's for a multi-agent env) or when
    the env is a callable that cannot be sent to another (a lambda, a local function)."""
    results: list[Played | None] = [None] * len(jobs)
    progress(0, len(jobs), "")
    if len(jobs) == 1 or not _picklable(jobs[0].env):
        for i, job in enumerate(jobs):
            results[i] = _done(play(job), i, len(jobs), labels[i], progress)
        return [r for r in results if r is not None]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers or os.cpu_count(), mp_context=context
    ) as pool:
        futures = {pool.submit(play, job): i for i, job in enumerate(jobs)}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            i = futures[future]
            results[i] = _done(future.result(), done, len(jobs), labels[i], progress)
    return [r for r in results if r is not None]


def _done(played: Played, done: int, total: int, label: str, progress: Progress) -> Played:
    logger.info("[%d/%d] %s: return %.1f ± %.1f", done, total, label,
                np.mean(played.returns), np.std(played.returns))  # fmt: skip
    progress(done, total, label)
    return played


def _record_models(mlflow_client: MlflowClient, models, groups, played, agents, mapping,
                   env, env_config, episodes, seed, move_alias) -> EvaluationReport:  # fmt: skip
    """Record each module's registered model with its versions' results."""
    shown_env = describe(env)
    config = None if env_config is None else dict(env_config)
    report = EvaluationReport("", shown_env, "", 0)
    for module, model in models.items():
        mine = [a for a in agents or [] if module_of(a, mapping, list(models)) == module]
        evaluations = [
            _evaluation(group[module], result, mine) for group, result in zip(groups, played)
        ]
        replays = {e.version: r.replay for e, r in zip(evaluations, played) if r.replay}
        recording.attach_replays(mlflow_client, model, replays, seed)
        run_id, best = recording.record(mlflow_client, model, shown_env, config, episodes,
                                        seed, evaluations, move_alias)  # fmt: skip
        recording.rewrite_cards(mlflow_client, model, evaluations)
        report.versions.extend(evaluations)
        report.best[model], report.run_ids[model] = best.version, run_id
    first = next(iter(models.values()))
    return replace(report, run_id=report.run_ids[first], best_version=report.best[first])


def _evaluation(version: Any, played: Played, agents: list[str]) -> VersionEvaluation:
    tags = version.tags
    iteration = tags.get(names.VERSION_TAG_ITERATION)
    training_return = tags.get("episode_return_mean")
    mine = {agent: played.agents[agent] for agent in agents if agent in played.agents}
    returns = tuple(map(sum, zip(*mine.values(), strict=True))) if mine else played.returns
    return VersionEvaluation(
        version=int(version.version),
        training_iteration=None if iteration is None else int(iteration),
        trial=tags.get(names.VERSION_TAG_TRIAL_NAME) or tags.get(names.VERSION_TAG_TRIAL_ID),
        training_return=None if training_return is None else float(training_return),
        returns=returns,
        replay=None if played.replay is None else _replay_tag(played.replay),
        registered_model=version.name,
        module_id=tags.get(names.VERSION_TAG_MODULE_ID),
        agents=mine,
    )


def _replay_tag(replay: Replay) -> str:
    return names.REPLAY_FILE if replay.path is not None else f"skipped: {replay.skipped}"


def _label(group: dict[str, Any]) -> str:
    versions = list(group.values())
    if len(versions) == 1:
        return f"version {versions[0].version}"
    return f"iteration {versions[0].tags.get(names.VERSION_TAG_ITERATION)}"


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:  # lambdas, local functions, objects holding them
        return False
