"""`evaluate`: play seeded episodes with registered versions (no Ray). It imports no
training tier (rllib, export, register, tune), so it runs with the `[evaluate]` extra."""

from __future__ import annotations

from typing import Any

import click

from rllib_mlflow import console
from rllib_mlflow.cli import options


class _EvaluateCommand(click.Command):
    """`--versions 3 4 NAME` would read NAME as a version: say how to pass several."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            if "unexpected extra argument" not in error.message:
                raise
            hint = ". Pass several versions as --versions 3,4 (or --versions 3 --versions 4)."
            raise click.UsageError(error.message + hint, error.ctx) from None


@click.command(cls=_EvaluateCommand, context_settings=options.CONTEXT)
@click.argument("name")
@click.option("--env", "env", metavar="ENV",
              help="A gymnasium id, or module:callable (an env class or a factory, called with "
              "the env config). [default: how the versions record their env]")  # fmt: skip
@click.option("--env-config", "env_config", metavar="JSON", callback=options.json_object,
              help="The env config, a JSON object. [default: the recorded one]")  # fmt: skip
@click.option("--agent-module", "agent_modules", multiple=True, metavar="AGENT=MODULE",
              callback=options.key_values,
              help="Multi-agent: the module an agent acts with, where the mapping used in "
              "training was a function and agent ids are not module ids. Repeatable.")  # fmt: skip
@click.option("--episodes", default=10, show_default=True, type=click.IntRange(1),
              help="Seeded episodes per version.")  # fmt: skip
@click.option("--versions", "wanted", multiple=True, metavar="V[,V...]",
              help="Versions or aliases, comma-separated or repeated: --versions 3,4,best. "
              "[default: all]")  # fmt: skip
@click.option("--seed", default=0, show_default=True, help="Episode i starts from seed+i.")
@click.option("--workers", type=click.IntRange(1), help="Processes. [default: one per core]")
@click.option("--move-alias", is_flag=True, help="Point eval-best at the version that plays best.")
@options.video
@options.tracking_uri
@options.common
def evaluate(
    name: str,
    env: str | None,
    env_config: dict[str, Any] | None,
    agent_modules: dict[str, str],
    episodes: int,
    wanted: tuple[str, ...],
    seed: int,
    workers: int | None,
    move_alias: bool,
    video: bool,
    tracking_uri: str | None,
    as_json: bool,
) -> None:
    """Play seeded episodes with each version of NAME (no Ray) and record the results as
    version tags, an evaluation run with a plot, and the versions' cards. NAME may be a
    multi-agent family (its modules registered as NAME-<module_id>): each checkpoint plays
    in its multi-agent env, every agent with its module's version."""
    from rllib_mlflow.mlflow import stores
    from rllib_mlflow.play.evaluation import evaluate as run_evaluation

    uri = stores.resolve(tracking_uri)
    stores.check(uri, must_exist=True)
    versions = [v.strip() for item in wanted for v in item.split(",") if v.strip()]
    with console.progress_bar(f"evaluate {name}", options.show_progress()) as progress:
        report = run_evaluation(
            name, env=env, env_config=env_config, episodes=episodes,
            versions=versions or None, seed=seed, tracking_uri=uri, workers=workers,
            move_alias=move_alias, video=video, agent_modules=agent_modules or None,
            on_progress=progress,
        )  # fmt: skip
    records = [_evaluation_record(e) for e in report.versions]
    if as_json:
        console.print_json({"registered_model": name, "env_id": report.env_id,
                            "tracking_uri": stores.shown(uri), "run_id": report.run_id,
                            "best_version": report.best_version, "best": report.best,
                            "versions": records})  # fmt: skip
        return
    family = len(report.best) > 1
    console.print_table(records, {**_FAMILY_COLUMNS, **_EVALUATION_COLUMNS} if family
                        else _EVALUATION_COLUMNS)  # fmt: skip
    for model, best in report.best.items():
        click.echo(f"best: {model} version {best}; evaluation run {report.run_ids[model]} "
                   f"in {stores.shown(uri)}")  # fmt: skip


_FAMILY_COLUMNS = {"registered_model": "model", "agents": "agents"}
_EVALUATION_COLUMNS = {
    "version": "version",
    "training_iteration": "iteration",
    "trial_name": "trial",
    "episode_return_mean": "training_return",
    "eval.episode_return_mean": "eval_return",
    "eval.episode_return_std": "eval_std",
    "replay": "replay",
}


def _evaluation_record(evaluation) -> dict[str, Any]:
    summary = evaluation.summary()
    agents = {agent: sum(returns) / len(returns) for agent, returns in evaluation.agents.items()}
    return {
        "registered_model": evaluation.registered_model,
        "module_id": evaluation.module_id,
        "agents": ", ".join(f"{a}: {r:.4g}" for a, r in agents.items()) or None,
        "eval.agents": agents,
        "version": evaluation.version,
        "training_iteration": evaluation.training_iteration,
        "trial_name": evaluation.trial,
        "episode_return_mean": evaluation.training_return,
        **{f"eval.{key}": value for key, value in summary.items()},
        "eval.episodes": len(evaluation.returns),
        "replay": evaluation.replay,
    }
