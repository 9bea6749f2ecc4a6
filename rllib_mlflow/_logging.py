"""Where this library's log messages go when the application has not said.

A library should not configure logging, but the Tune callback's progress at the end of an
experiment (and the CLI's messages) must reach the person waiting: when neither the
`rllib_mlflow` logger nor the root logger has a handler, INFO and above go to stderr.
"""

from __future__ import annotations

import logging
import sys

PREFIX_FORMAT = "rllib-mlflow: %(message)s"


def show_info_logs(level: int = logging.INFO) -> None:
    """Send `rllib_mlflow` messages at `level` and above to stderr, unless logging is set up."""
    package = logging.getLogger("rllib_mlflow")
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(PREFIX_FORMAT))
    package.addHandler(handler)
    package.setLevel(level)
