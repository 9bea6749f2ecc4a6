"""What every command shares: --json, -q and -v, --tracking-uri, --video and --formats,
and the verbosity they set, kept in click's context so that the group's error handling reads it."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click

from rllib_mlflow import console

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
VERBOSITY = "rllib_mlflow.verbosity"  # in click's ctx.meta: -1 with -q, 1 with -v


def _verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value:
        ctx.meta[VERBOSITY] = -1 if param.name == "quiet" else 1
    return value


def common(command: Callable) -> Callable:
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


def show_progress() -> bool:
    return _level() >= 0


tracking_uri = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    show_envvar=True,
    metavar="URI",
    help="MLflow tracking server or database. [default: sqlite:///mlflow.db here]",
)
# The setting `RegistrationSettings.video` (documented there), for `sync` and `register`.
video = click.option(
    "--video",
    is_flag=True,
    help="Record one seeded episode per version from the env's rgb_array render (no Ray) "
    "as replay.gif, linked from the version's card.",
)


def json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A JSON object option (`--env-config '{"length": 8}'`), parsed; None when not given."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("a JSON object is expected, e.g. '{\"length\": 8}'")
    return parsed


def key_values(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    """Repeated KEY=VALUE options (`--agent-module a0=p0`) as a dict."""
    pairs = {}
    for item in value:
        key, sep, val = item.partition("=")
        if not sep or not key or not val:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        pairs[key] = val
    return pairs


def formats(default: str | None) -> Callable:
    """--formats, for `export` and the settings `RegistrationSettings.formats` of `sync` and
    `register` (None: each trial's journaled formats, else all). Parsed and checked by
    `rllib_mlflow.export.validate_formats` for all three, when the command runs."""
    journaled = "" if default else " [default: the journal's formats, else all]"
    return click.option(
        "--formats",
        default=default,
        show_default=default is not None,
        metavar="LIST",
        help="Comma-separated export formats, of saved_model, h5, onnx, tflite (LiteRT "
        f"float32) and tflite_int8 (LiteRT int8).{journaled}",
    )
