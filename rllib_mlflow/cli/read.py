"""The commands on registered versions: `versions`, `prune` and `evaluate`. They import no
training tier (rllib, export, register, tune), so that `versions` and `prune` run in the
light install and `evaluate` with the `[evaluate]` extra."""

from __future__ import annotations

import logging
from typing import Any

import click

from rllib_mlflow import console
from rllib_mlflow.cli import options

logger = logging.getLogger(__name__)


class _EvaluateCommand(click.Command):
    """`--versions 3 4 NAME` would read NAME as a version: say how to pass several."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            if "unexpected extra argument" in error.message:
                error.message += (
                    ". Pass several versions as --versions 3,4 (or --versions 3 --versions 4)."
                )
            raise


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
def evaluate(name, env_id, episodes, wanted, seed, workers, move_alias, video, tracking_uri,
             as_json) -> None:  # fmt: skip
    """Play seeded episodes with each version of NAME (no Ray) and record the results as
    version tags, an evaluation run with a plot, and the versions' cards."""
    from rllib_mlflow.evaluate.evaluation import evaluate as run_evaluation
    from rllib_mlflow.mlflow import stores

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


@click.command(context_settings=options.CONTEXT)
@click.argument("name")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(0), metavar="N",
              help="The newest N versions that match; 0 for all.")  # fmt: skip
@click.option("--trial", metavar="TRIAL", help="Only this trial's versions (its id or name).")
@click.option("--iterations", metavar="N|FIRST-LAST",
              help="Only these training iterations, e.g. 100-200.")  # fmt: skip
@click.option("--where", "condition", metavar="TAG<OP>NUMBER",
              help="Only versions whose tag compares so, e.g. 'episode_return_mean>=400' "
              "or 'eval.episode_return_mean>450'.")  # fmt: skip
@options.tracking_uri
@options.common
def versions(name, limit, trial, iterations, condition, tracking_uri, as_json) -> None:
    """List the versions of NAME, newest first: aliases, trial, iteration, env steps,
    training and evaluation return, formats."""
    from rllib_mlflow.mlflow import stores
    from rllib_mlflow.mlflow.listing import (
        VersionQuery,
        parse_condition,
        parse_iterations,
        version_records,
    )

    try:
        query = VersionQuery(
            limit=limit or None,
            trial=trial,
            iterations=None if iterations is None else parse_iterations(iterations),
            condition=None if condition is None else parse_condition(condition),
        )
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    uri = stores.resolve(tracking_uri)
    mlflow_client = stores.reader(uri)
    model = stores.require_model(mlflow_client, name, uri)
    records = version_records(mlflow_client, name, query, model=model)
    logger.info("%s in %s: %d version(s) listed", name, stores.shown(uri), len(records))
    if as_json:
        console.print_json(records)
    else:
        console.print_table(records, _VERSION_COLUMNS)


_VERSION_COLUMNS = {
    "version": "version",
    "aliases": "aliases",
    "trial_name": "trial",
    "training_iteration": "iteration",
    "num_env_steps_sampled_lifetime": "env_steps",
    "episode_return_mean": "return",
    "eval.episode_return_mean": "eval_return",
    "formats": "formats",
    "created": "created",
}


@click.command(context_settings=options.CONTEXT)
@click.argument("name")
@click.option("--keep-last", type=click.IntRange(0), metavar="N",
              help="Keep the N highest training iterations.")  # fmt: skip
@click.option("--keep-best", type=click.IntRange(0), metavar="K",
              help="Keep the K best by the model's best metric.")  # fmt: skip
@click.option("--delete-artifacts", is_flag=True, help="Delete their files too.")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@options.tracking_uri
@options.common
def prune(name, keep_last, keep_best, delete_artifacts, dry_run, tracking_uri, as_json) -> None:
    """Delete the versions of NAME outside a retention policy. Versions holding `best`,
    `eval-best` or an alias a person set are always kept."""
    from rllib_mlflow.mlflow import stores
    from rllib_mlflow.mlflow.retention import prune as run_prune

    if keep_last is None and keep_best is None:
        raise click.UsageError("Say what to keep: --keep-last N and/or --keep-best K.")
    uri = stores.resolve(tracking_uri)
    mlflow_client = stores.reader(uri) if dry_run else stores.check(uri, must_exist=True)
    stores.require_model(mlflow_client, name, uri)
    logger.info("pruning %s in %s", name, stores.shown(uri))
    show = options.show_progress() and not dry_run
    with console.progress_bar(f"prune {name}", show) as progress:
        plan = run_prune(mlflow_client, name, keep_last, keep_best,
                         delete_artifacts=delete_artifacts, dry_run=dry_run,
                         on_progress=progress)  # fmt: skip
    deleted = [_pruned(v) for v in plan.delete]
    kept = [{**_pruned(v), "reason": plan.reasons[v.version]} for v in plan.keep]
    if as_json:
        console.print_json({"registered_model": name, "tracking_uri": stores.shown(uri),
                            "dry_run": dry_run, "deleted": deleted, "kept": kept})  # fmt: skip
        return
    verb = "would delete" if dry_run else "deleted"
    for version in deleted:
        click.echo(f"{verb} version {version['version']} "
                   f"(iteration {version['training_iteration']})")  # fmt: skip
    for version in kept:
        click.echo(f"kept version {version['version']} ({version['reason']})")


def _pruned(version) -> dict[str, Any]:
    return {"version": int(version.version), "training_iteration": version.training_iteration}
