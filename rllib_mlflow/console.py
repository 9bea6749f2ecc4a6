"""What the `rllib-mlflow` command shows a person: log verbosity, third-party noise,
progress bars, one-line errors and JSON.

Results go to stdout (a table, or JSON with `--json`); messages, progress and errors go to
stderr, so that `rllib-mlflow versions NAME --json | jq` always gets clean JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from rllib_mlflow._logging import PREFIX_FORMAT

logger = logging.getLogger("rllib_mlflow")

# Read by TensorFlow, absl, gRPC and pygame at import: set before any of them loads. oneDNN's
# notice is logged before absl is initialised, which no log level hides: turn the notice off.
_QUIET_THIRD_PARTY = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "3",
    "ABSL_MIN_LOG_LEVEL": "3",
    "PYGAME_HIDE_SUPPORT_PROMPT": "1",
}
# Ray resets the levels of "ray" and "ray.rllib" when it is imported, not of their children.
_NOISY_LOGGERS = {
    "absl": logging.ERROR,
    "tensorflow": logging.ERROR,
    "h5py": logging.ERROR,
    "alembic": logging.WARNING,
    # MLflow resets "mlflow" when it is imported: "Creating initial MLflow database tables..."
    "mlflow.store.db.utils": logging.WARNING,
    "urllib3": logging.ERROR,
    "matplotlib": logging.ERROR,
    "ray": logging.ERROR,
    "ray._common.deprecation": logging.ERROR,  # RLlib's deprecations, on every module restore
}


def silence_third_party() -> None:
    """Keep TensorFlow's C++ logs, absl, Ray, MLflow's info and Python warnings of other
    libraries out of our own processes' output (the user's own settings win)."""
    for name, value in _QUIET_THIRD_PARTY.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore")
    for name, level in _NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def command_logging(verbosity: int) -> Iterator[None]:
    """Our messages on stderr while a command runs: -q warnings and errors only, default
    our progress messages too, -v debug. Restored afterwards, for callers in-process."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    package = logging.getLogger("rllib_mlflow")
    saved = package.handlers[:], package.level, package.propagate
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter(PREFIX_FORMAT))
    package.handlers[:] = [handler]
    package.setLevel(level)
    package.propagate = False  # TensorFlow puts absl's handler on the root logger
    try:
        yield
    finally:
        package.handlers[:], package.level, package.propagate = saved


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a message comes (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


_OBJECT_AT = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>:? ?")


def one_line(error: BaseException, limit: int = 600) -> str:
    """An exception as one line: its first line, with the type when it is not ours."""
    from rllib_mlflow.errors import RLlibMLflowError

    text = " ".join(str(error).split()) or type(error).__name__
    text = _OBJECT_AT.sub("", text)  # urllib3 names its connection object, address and all
    if not isinstance(error, RLlibMLflowError | FileExistsError | ValueError):
        text = f"{type(error).__name__}: {text}"
    if len(text) <= limit:
        return text
    return text[: limit - 3].rsplit(" ", 1)[0] + "..."  # whole words: never "889 mo..."


def how_it_ended(exit_code: int | str) -> str:
    """A process's end in words: "died (SIGKILL)" for a signal, else "exited (CODE)"."""
    if isinstance(exit_code, int) and exit_code < 0:
        try:
            return f"died ({signal.Signals(-exit_code).name})"
        except ValueError:
            return f"died (signal {-exit_code})"
    return f"exited ({exit_code})"


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def utc_iso(milliseconds: int | None) -> str | None:
    """Epoch milliseconds as UTC ISO 8601, e.g. '2026-11-24T06:50:03Z'."""
    if milliseconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(milliseconds / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def print_table(rows: list[dict[str, Any]], columns: dict[str, str]) -> None:
    """Aligned plain-text columns (`columns`: key -> header), like the mlflow CLI's tables."""
    cells = [[_cell(row.get(key)) for key in columns] for row in rows]
    headers = list(columns.values())
    # No row (nothing matched a filter): the headers alone.
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# (done, total, what): the progress callback the library functions take.
ProgressCallback = Callable[[int, int, str], None]


@contextlib.contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[ProgressCallback]:
    """A progress bar with done/total and an ETA on stderr, driven by a library
    `on_progress` callback. The ETA is the rate over every item finished since the first
    (not rich's last 30 s: a backfill's items take seconds each and finish in bursts with
    several workers; the first pays the imports)."""
    if not enabled:
        yield lambda done, total, what: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[what]}"),
    )
    whole_run = 7 * 24 * 3600.0
    with Progress(
        *columns, console=Console(stderr=True), speed_estimate_period=whole_run
    ) as progress:
        task = progress.add_task(description, total=None, what="")

        def update(done: int, total: int, what: str) -> None:
            progress.update(task, completed=done, total=total, what=what)

        yield update
