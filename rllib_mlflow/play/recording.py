"""Recording an evaluation: version tags, an evaluation run with its metrics, the plot and
evaluation.json, the `eval-best` alias, replays and the rewritten cards.

One registered model at a time: a multi-agent family records each module's model with the
returns of that module's agents (and each agent's, as `eval.agent.<id>.*` tags).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from rllib_mlflow import names
from rllib_mlflow.mlflow import card, runs
from rllib_mlflow.mlflow.registry_client import RegistryClient
from rllib_mlflow.play import plot
from rllib_mlflow.redaction import get_logger, redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from rllib_mlflow.play.evaluation import VersionEvaluation

logger = get_logger(__name__)

EVAL_EXPERIMENT = "rllib-mlflow-evaluation"


def record(
    mlflow_client: MlflowClient,
    name: str,
    env: str,
    env_config: dict[str, Any] | None,
    episodes: int,
    seed: int,
    evaluations: Sequence[VersionEvaluation],
    move_alias: bool,
) -> tuple[str, VersionEvaluation]:
    """Version tags, an evaluation run with metrics and the plot, and the eval-best alias;
    `env_config` only when the caller gave one (else the recorded one was used)."""
    for evaluation in evaluations:
        _tag_version(mlflow_client, name, evaluation, env, env_config, episodes, seed)
    run = mlflow_client.create_run(
        runs.experiment_id(mlflow_client, EVAL_EXPERIMENT),
        run_name=f"evaluate-{name}",
        tags={"registered_model": name},
    )
    run_id = run.info.run_id
    mlflow_client.log_batch(run_id, params=_params(name, env, episodes, seed))
    runs.log_metric_batches(mlflow_client, run_id, _metrics(evaluations))
    best = max(evaluations, key=lambda e: e.mean)
    _log_plot_and_results(mlflow_client, run_id, name, env, evaluations)
    mlflow_client.set_terminated(run_id)
    if move_alias:
        mlflow_client.set_registered_model_alias(name, names.ALIAS_EVAL_BEST, str(best.version))
    logger.info(
        "%s: best version %s (return %.1f); evaluation run %s in experiment %r",
        name,
        best.version,
        best.mean,
        run_id,
        EVAL_EXPERIMENT,
    )
    return run_id, best


def attach_replays(mlflow_client: MlflowClient, name: str, replays: dict, seed: int) -> None:
    """Log each version's recorded replay (`replays`: version number -> `Replay`)."""
    for number, replay in sorted(replays.items()):
        card.attach_replay(mlflow_client, name, number, replay, seed=seed)


def rewrite_cards(
    mlflow_client: MlflowClient, name: str, evaluations: Sequence[VersionEvaluation]
) -> None:
    """The evaluation changed the facts: rewrite the evaluated versions' and the family card."""
    try:
        for evaluation in evaluations:
            card.publish_version_card(mlflow_client, name, evaluation.version)
        card.publish_family_card(mlflow_client, name)
    except Exception as error:  # the results are recorded; a stale card is not fatal
        logger.warning("Could not rewrite the model cards of %s: %s", name, error)


def _tag_version(mlflow_client, name, evaluation, env, env_config, episodes, seed) -> None:
    number = str(evaluation.version)
    tags = {f"{names.VERSION_TAG_EVAL_PREFIX}{k}": v for k, v in evaluation.summary().items()}
    for agent, returns in evaluation.agents.items():
        prefix = f"{names.VERSION_TAG_EVAL_AGENT_PREFIX}{agent}."
        tags[f"{prefix}episode_return_mean"] = float(np.mean(returns))
    values = {key: f"{value:.6g}" for key, value in tags.items()}
    values[names.VERSION_TAG_EVAL_EPISODES] = str(episodes)
    values[names.VERSION_TAG_EVAL_ENV_ID] = env
    values[names.VERSION_TAG_EVAL_SEED] = str(seed)
    if env_config is not None:
        values[names.VERSION_TAG_EVAL_ENV_CONFIG] = json.dumps(redact(env_config), default=str)
    for key, value in values.items():
        mlflow_client.set_model_version_tag(name, number, key, value)


def _metrics(evaluations: Sequence[VersionEvaluation]) -> list:
    from mlflow.entities import Metric

    metrics = []
    for evaluation in evaluations:
        step = evaluation.training_iteration or 0
        for key, value in evaluation.summary().items():
            metrics.append(Metric(f"eval/{key}", value, 0, step))
    return metrics


def _log_plot_and_results(mlflow_client, run_id, name, env, evaluations) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, f"evaluation_{name}.png")
        best = _alias_version(mlflow_client, name, names.ALIAS_BEST)
        plot.plot_returns(evaluations, name, env, path, best_version=best)
        mlflow_client.log_artifact(run_id, path)
        results = os.path.join(directory, "evaluation.json")
        with open(results, "w") as stream:
            rows = [{**asdict(e), **e.summary()} for e in evaluations]
            json.dump(rows, stream, indent=2, default=str)
        mlflow_client.log_artifact(run_id, results)


def _params(name: str, env: str, episodes: int, seed: int) -> list:
    from mlflow.entities import Param

    values = {"registered_model": name, "env_id": env, "episodes": episodes, "seed": seed}
    return [Param(k, str(v)) for k, v in values.items()]


def _alias_version(mlflow_client: RegistryClient, name: str, alias: str) -> int | None:
    aliases = mlflow_client.get_registered_model(name).aliases
    return int(aliases[alias]) if alias in aliases else None
