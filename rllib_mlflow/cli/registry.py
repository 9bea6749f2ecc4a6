"""The commands on the registry: `versions` lists registered versions, `prune` deletes those
outside a retention policy. They import no training tier (rllib, export, register, tune),
so that they run in the light install."""

from __future__ import annotations

import logging
from typing import Any

import click

from rllib_mlflow import console
from rllib_mlflow.cli import options

logger = logging.getLogger(__name__)


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
def versions(
    name: str,
    limit: int,
    trial: str | None,
    iterations: str | None,
    condition: str | None,
    tracking_uri: str | None,
    as_json: bool,
) -> None:
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
        return
    console.print_table(records, _VERSION_COLUMNS)
    if not records:
        click.echo(f"No version of {name} matches.", err=True)


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
              help="Keep the N newest versions (the last registered, whatever their "
              "training iteration or trial).")  # fmt: skip
@click.option("--keep-best", type=click.IntRange(0), metavar="K",
              help="Keep the K best by the model's best metric.")  # fmt: skip
@click.option("--delete-artifacts", is_flag=True, help="Delete their files too.")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@options.tracking_uri
@options.common
def prune(
    name: str,
    keep_last: int | None,
    keep_best: int | None,
    delete_artifacts: bool,
    dry_run: bool,
    tracking_uri: str | None,
    as_json: bool,
) -> None:
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
