"""The `rllib-mlflow` command, in the style of the `mlflow` CLI (click).

Exit codes: 0 success, 1 a runtime failure (one line on stderr; the traceback with -v),
2 a usage error. Results go to stdout (`--json` for scripts), messages and progress bars
to stderr. Reading commands never create a store, and every command that talks to a
tracking server checks it first and gives up in seconds when it does not answer.

The commands live by what they act on, which is also what they need: `checkpoints`
(`export`, `sync`, `register`: RLlib checkpoints, the `[tune]` extra), `registry`
(`versions`, `prune`: the light install) and `evaluation` (`evaluate`: `[evaluate]`); each
imports its tiers inside the command.
"""

from __future__ import annotations

import traceback
from typing import Any

import click

from rllib_mlflow import console
from rllib_mlflow._version import __version__
from rllib_mlflow.cli import checkpoints, evaluation, registry
from rllib_mlflow.cli.options import CONTEXT, VERBOSITY
from rllib_mlflow.extras import missing_extra
from rllib_mlflow.legacy_keras import use_legacy_keras


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


for _command in (
    checkpoints.export,
    checkpoints.sync,
    checkpoints.register,
    evaluation.evaluate,
    registry.versions,
    registry.prune,
):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """The console script: run the command and return its exit code."""
    console.silence_third_party()  # this process is ours: before TensorFlow or Ray load
    use_legacy_keras()  # old-stack TF checkpoints are read here (see legacy_keras)
    try:
        cli.main(args=argv, prog_name="rllib-mlflow", standalone_mode=True)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0
