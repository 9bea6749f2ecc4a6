"""The commands on RLlib checkpoints: `export` writes one as models, `sync` registers an
experiment's checkpoints, `register` one checkpoint directory. They read RLlib checkpoints,
so they need the `[tune]` extra (imported inside each command, for the one-line error that
names it)."""

from __future__ import annotations

import sys
from typing import Any

import click

from rllib_mlflow import console
from rllib_mlflow.cli import options


@click.command(context_settings=options.CONTEXT)
@click.argument("checkpoint")
@click.option("-o", "--output", required=True, metavar="DIR", help="Output directory.")
@options.formats("saved_model,h5,onnx")
@click.option("--min-int8-agreement", type=click.FloatRange(0, 1), default=0.99,
              show_default=True, help="Refuse tflite_int8 where it acts like RLlib on a "
              "smaller share of observations.")  # fmt: skip
@click.option("--module-id", metavar="ID", help="Only this module of a multi-agent checkpoint.")
@click.option("--no-verify", is_flag=True, help="Skip the parity check against RLlib.")
@click.option("--overwrite", is_flag=True, help="Replace existing files in the output directory.")
@options.common
def export(
    checkpoint, output, formats, min_int8_agreement, module_id, no_verify, overwrite, as_json
) -> None:
    """Export CHECKPOINT (a directory or s3:// URI) to SavedModel, .h5, ONNX and LiteRT."""
    from rllib_mlflow.export import export_checkpoint

    exported = export_checkpoint(
        checkpoint,
        output,
        formats=formats,
        module_id=module_id,
        verify=not no_verify,
        overwrite=overwrite,
        min_int8_agreement=min_int8_agreement,
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


@click.command(context_settings=options.CONTEXT)
@click.argument("experiment_dirs", nargs=-1, required=True, metavar="EXPERIMENT_DIR...",
                type=click.Path(exists=True, file_okay=False))  # fmt: skip
@click.option("--name", metavar="NAME",
              help="Registered model name. [default: the one in the journal]")  # fmt: skip
@options.formats(None)
@options.video
@options.tracking_uri
@options.common
def sync(experiment_dirs, name, formats, video, tracking_uri, as_json) -> None:
    """Register what Tune experiments left unregistered (journal and checkpoints on disk)."""
    from rllib_mlflow.tune.sync import sync_experiment

    settings = _settings(name, formats, video)
    uri = _tracking_uri(tracking_uri)
    reports = []
    for directory in experiment_dirs:
        with console.progress_bar(f"sync {directory}", options.show_progress()) as progress:
            report = sync_experiment(directory, **settings, tracking_uri=uri, on_progress=progress)
        reports.append(_report_record(directory, report, uri))
    _finish_registration(reports, as_json)


@click.command(context_settings=options.CONTEXT)
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, metavar="NAME", help="Registered model name.")
@options.formats(None)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Checkpoints registered at a time, each in a process of its own.")  # fmt: skip
@options.video
@options.tracking_uri
@options.common
def register(path, name, formats, workers, video, tracking_uri, as_json) -> None:
    """Backfill: register every checkpoint under PATH (idempotent): a folder of `algo.save()`
    directories with any names, nested up to three levels, Tune experiments and trials, or
    one checkpoint. Exit 1 if any checkpoint failed; the others are registered."""
    from rllib_mlflow.tune.sync import register_path

    settings = _settings(name, formats, video)
    uri = _tracking_uri(tracking_uri)
    with console.progress_bar(f"register {name}", options.show_progress()) as progress:
        report = register_path(
            path, **settings, tracking_uri=uri, workers=workers, on_progress=progress
        )
    _finish_registration([_report_record(path, report, uri)], as_json)


def _settings(name: str | None, formats: str | None, video: bool) -> dict[str, Any]:
    """What the options of `sync` and `register` choose, in one place: the fields of
    `RegistrationSettings` (documented there) they set. Formats are checked before any
    work, by what `export --formats` is checked by."""
    from rllib_mlflow.export import validate_formats

    checked = None if formats is None else validate_formats(formats)
    return {"registered_model_name": name, "formats": checked, "video": video}


def _tracking_uri(tracking_uri: str | None) -> str:
    from rllib_mlflow.mlflow import stores

    uri = stores.resolve(tracking_uri)
    stores.check(uri, must_exist=False)
    return uri


def _report_record(path: str, report, uri: str) -> dict[str, Any]:
    from rllib_mlflow.mlflow import stores

    return {
        "path": str(path),
        "tracking_uri": stores.shown(uri),
        "registered": list(report.registered),
        "failed": dict(report.failed),  # checkpoint path: one-line cause
        "written_by": dict(report.written_by),  # failed checkpoint path: its Ray version
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
        for path, error in record["failed"].items():
            ray = record["written_by"].get(path)
            # The reader may name the writer in its message already.
            writer = f" (written by Ray {ray})" if ray and f"Ray {ray}" not in error else ""
            click.echo(f"rllib-mlflow: failed {path}{writer}: {error}", err=True)
    if any(record["failed"] for record in records):
        sys.exit(1)
