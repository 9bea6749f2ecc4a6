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
@click.option("--env", "env_id", metavar="ENV_ID",
              help="Gymnasium env id. [default: the versions' env_id tag]")  # fmt: skip
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
    env_id: str | None,
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
    version tags, an evaluation run with a plot, and the versions' cards."""
    from rllib_mlflow.mlflow import stores
    from rllib_mlflow.play.evaluation import evaluate as run_evaluation

    uri = stores.resolve(tracking_uri)
    stores.require_model(stores.check(uri, must_exist=True), name, uri)
    versions = [v.strip() for item in wanted for v in item.split(",") if v.strip()]
    with console.progress_bar(f"evaluate {name}", options.show_progress()) as progress:
        report = run_evaluation(
            name, env_id, episodes=episodes, versions=versions or None, seed=seed,
            tracking_uri=uri, workers=workers, move_alias=move_alias, video=video,
            on_progress=progress,
        )  # fmt: skip
    records = [_evaluation_record(e) for e in report.versions]
    if as_json:
        console.print_json({"registered_model": name, "env_id": report.env_id,
                            "tracking_uri": stores.shown(uri), "run_id": report.run_id,
                            "best_version": report.best_version, "versions": records})  # fmt: skip
        return
    console.print_table(records, _EVALUATION_COLUMNS)
    click.echo(f"best: version {report.best_version}; evaluation run {report.run_id} "
               f"in {stores.shown(uri)}")  # fmt: skip


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
    return {
        "version": evaluation.version,
        "training_iteration": evaluation.training_iteration,
        "trial_name": evaluation.trial,
        "episode_return_mean": evaluation.training_return,
        **{f"eval.{key}": value for key, value in summary.items()},
        "eval.episodes": len(evaluation.returns),
        "replay": evaluation.replay,
    }
