"""The `rllib-mlflow` command, in the style of the `mlflow` CLI (click).

Exit codes: 0 success, 1 a runtime failure (one line on stderr; the traceback with -v),
2 a usage error. Results go to stdout (`--json` for scripts), messages and progress bars
to stderr. Reading commands never create a store, and every command that talks to a
tracking server checks it first and gives up in seconds when it does not answer.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from rllib_mlflow import __version__, console
from rllib_mlflow.extras import missing_extra

logger = logging.getLogger("rllib_mlflow.cli")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
VERBOSITY = "rllib_mlflow.verbosity"  # in click's ctx.meta: -1 with -q, 1 with -v


class _Group(click.Group):
    """Runtime failures exit 1 with one line (the traceback only with -v)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:
            if ctx.meta.get(VERBOSITY, 0) > 0:
                click.echo(traceback.format_exc(), err=True)
            if isinstance(error, ModuleNotFoundError):  # the light install lacks an extra
                command = ctx.invoked_subcommand or "rllib-mlflow"
                extra = "evaluate" if command == "evaluate" else "tune"
                error = missing_extra(error, command, extra)
            click.echo(f"rllib-mlflow: error: {console.one_line(error)}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="rllib-mlflow")
def cli() -> None:
    """Export RLlib checkpoints as standard models (TF SavedModel, Keras .h5, ONNX) and
    register them in MLflow."""


# -- options shared by the commands ----------------------------------------------------------


def _verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value:
        ctx.meta[VERBOSITY] = -1 if param.name == "quiet" else 1
    return value


def _common(command: Callable) -> Callable:
    """--json, -q and -v on every command; logging set up before the command runs."""

    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
    @click.option("-q", "--quiet", is_flag=True, callback=_verbosity, expose_value=False,
                  help="Only warnings and errors; no progress bars.")  # fmt: skip
    @click.option("-v", "--verbose", is_flag=True, callback=_verbosity, expose_value=False,
                  help="Debug messages, and the traceback of a failure.")  # fmt: skip
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with console.command_logging(_level()):
            return command(*args, **kwargs)

    return wrapper


def _level() -> int:
    return click.get_current_context().meta.get(VERBOSITY, 0)


def _show_progress() -> bool:
    return _level() >= 0


_tracking_uri = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    show_envvar=True,
    metavar="URI",
    help="MLflow tracking server or database. [default: sqlite:///mlflow.db here]",
)
_name = click.option("--name", metavar="NAME", help="Registered model name.")
_video = click.option(
    "--video",
    is_flag=True,
    help="Record one seeded episode per version from the env's rgb_array render (no Ray) "
    "as replay.gif, linked from the version's card.",
)


# -- commands ----------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.argument("checkpoint")
@click.option("-o", "--output", required=True, metavar="DIR", help="Output directory.")
@click.option("--formats", default="saved_model,h5,onnx", show_default=True,
              help="Comma-separated export formats.")  # fmt: skip
@click.option("--module-id", metavar="ID", help="Only this module of a multi-agent checkpoint.")
@click.option("--no-verify", is_flag=True, help="Skip the parity check against RLlib.")
@click.option("--overwrite", is_flag=True, help="Replace existing files in the output directory.")
@_common
def export(checkpoint, output, formats, module_id, no_verify, overwrite, as_json) -> None:
    """Export CHECKPOINT (a directory or s3:// URI) to SavedModel, .h5 and ONNX."""
    from rllib_mlflow.export import export_checkpoint

    exported = export_checkpoint(
        checkpoint,
        output,
        formats=formats,
        module_id=module_id,
        verify=not no_verify,
        overwrite=overwrite,
    )
    records = [_export_record(policy) for policy in exported]
    if as_json:
        console.print_json(records)
        return
    for record in records:
        parity = record["parity_max_abs_diff"]
        summary = "not verified" if parity is None else f"parity max abs diff {parity:.2e}"
        click.echo(f"{record['module_id']}: {record['path']} "
                   f"({', '.join(record['formats'])}; {summary})")  # fmt: skip


def _export_record(policy) -> dict[str, Any]:
    parity = policy.parity
    return {
        "module_id": policy.module_id,
        "path": str(policy.path),
        "formats": list(policy.formats),
        "parity_max_abs_diff": None if parity is None else parity["max_abs_diff"],
        "parity_passed": None if parity is None else parity["passed"],
    }


@cli.command(context_settings=CONTEXT)
@click.argument("experiment_dirs", nargs=-1, required=True, metavar="EXPERIMENT_DIR...",
                type=click.Path(exists=True, file_okay=False))  # fmt: skip
@click.option("--name", metavar="NAME",
              help="Registered model name. [default: the one in the journal]")  # fmt: skip
@_video
@_tracking_uri
@_common
def sync(experiment_dirs, name, video, tracking_uri, as_json) -> None:
    """Register what Tune experiments left unregistered (journal and checkpoints on disk)."""
    from rllib_mlflow.mlflow import stores
    from rllib_mlflow.tune.sync import sync_experiment

    uri = stores.resolve(tracking_uri)
    stores.check(uri, must_exist=False)
    reports = []
    for directory in experiment_dirs:
        with console.progress_bar(f"sync {directory}", _show_progress()) as progress:
            report = sync_experiment(
                directory, name, tracking_uri=uri, video=video, on_progress=progress
            )
        reports.append(_report_record(directory, report, uri))
    _finish_registration(reports, as_json)


@cli.command(context_settings=CONTEXT)
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, metavar="NAME", help="Registered model name.")
@_video
@_tracking_uri
@_common
def register(path, name, video, tracking_uri, as_json) -> None:
    """Backfill: register the checkpoints of an experiment, a trial or one checkpoint
    directory (idempotent)."""
    from rllib_mlflow.mlflow import stores
    from rllib_mlflow.tune.sync import register_path

    uri = stores.resolve(tracking_uri)
    stores.check(uri, must_exist=False)
    with console.progress_bar(f"register {name}", _show_progress()) as progress:
        report = register_path(path, name, tracking_uri=uri, video=video, on_progress=progress)
    _finish_registration([_report_record(path, report, uri)], as_json)


def _report_record(path: str, report, uri: str) -> dict[str, Any]:
    from rllib_mlflow.mlflow import stores

    return {
        "path": str(path),
        "tracking_uri": stores.shown(uri),
        "registered": list(report.registered),
        "failed": dict(report.failed),
    }


def _finish_registration(records: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        console.print_json(records)
    else:
        for record in records:
            click.echo(f"{record['path']}: {len(record['registered'])} checkpoint(s) registered "
                       f"or already there, {len(record['failed'])} failed "
                       f"(in {record['tracking_uri']})")  # fmt: skip
    for record in records:
        for key, error in record["failed"].items():
            click.echo(f"rllib-mlflow: failed {key}: {error}", err=True)
    if any(record["failed"] for record in records):
        sys.exit(1)


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


@cli.command(cls=_EvaluateCommand, context_settings=CONTEXT)
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
@_video
@_tracking_uri
@_common
def evaluate(name, env_id, episodes, wanted, seed, workers, move_alias, video, tracking_uri,
             as_json) -> None:  # fmt: skip
    """Play seeded episodes with each version of NAME (no Ray) and record the results as
    version tags, an evaluation run with a plot, and the versions' cards."""
    from rllib_mlflow.evaluate.evaluation import evaluate as run_evaluation
    from rllib_mlflow.mlflow import stores

    uri = stores.resolve(tracking_uri)
    stores.require_model(stores.check(uri, must_exist=True), name, uri)
    versions = [v.strip() for item in wanted for v in item.split(",") if v.strip()]
    with console.progress_bar(f"evaluate {name}", _show_progress()) as progress:
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


@cli.command(context_settings=CONTEXT)
@click.argument("name")
@_tracking_uri
@_common
def versions(name, tracking_uri, as_json) -> None:
    """List the versions of NAME: aliases, trial, iteration, env steps, training and
    evaluation return, formats."""
    from rllib_mlflow.mlflow import stores
    from rllib_mlflow.mlflow.listing import version_records

    uri = stores.resolve(tracking_uri)
    mlflow_client = stores.check(uri, must_exist=True)
    stores.require_model(mlflow_client, name, uri)
    records = version_records(mlflow_client, name)
    logger.info("%s in %s: %d version(s)", name, stores.shown(uri), len(records))
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


@cli.command(context_settings=CONTEXT)
@click.argument("name")
@click.option("--keep-last", type=click.IntRange(0), metavar="N",
              help="Keep the N highest training iterations.")  # fmt: skip
@click.option("--keep-best", type=click.IntRange(0), metavar="K",
              help="Keep the K best by the model's best metric.")  # fmt: skip
@click.option("--delete-artifacts", is_flag=True, help="Delete their files too.")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@_tracking_uri
@_common
def prune(name, keep_last, keep_best, delete_artifacts, dry_run, tracking_uri, as_json) -> None:
    """Delete the versions of NAME outside a retention policy. Versions holding `best`,
    `eval-best` or an alias a person set are always kept."""
    from rllib_mlflow.mlflow import stores
    from rllib_mlflow.mlflow.retention import prune as run_prune

    if keep_last is None and keep_best is None:
        raise click.UsageError("Say what to keep: --keep-last N and/or --keep-best K.")
    uri = stores.resolve(tracking_uri)
    mlflow_client = stores.check(uri, must_exist=True)
    stores.require_model(mlflow_client, name, uri)
    logger.info("pruning %s in %s", name, stores.shown(uri))
    with console.progress_bar(f"prune {name}", _show_progress() and not dry_run) as progress:
        plan = run_prune(mlflow_client, name, keep_last, keep_best,
                         delete_artifacts=delete_artifacts, dry_run=dry_run,
                         on_progress=progress)  # fmt: skip
    deleted = [_pruned(v) for v in plan.delete]
    kept = [{**_pruned(v), "reason": plan.reasons[str(v.version)]} for v in plan.keep]
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
    iteration = version.tags.get("training_iteration")
    return {"version": int(version.version),
            "training_iteration": None if iteration is None else int(iteration)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """The console script: run the command and return its exit code."""
    console.silence_third_party()  # this process is ours: before TensorFlow or Ray load
    try:
        cli.main(args=argv, prog_name="rllib-mlflow", standalone_mode=True)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
