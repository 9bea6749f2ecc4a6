"""Which optional dependencies (extras) each part of rllib-mlflow needs, and a one-line error
naming the install command when one is missing.

`pip install rllib-mlflow` is the light install: loading and serving policies and browsing
the registry of a tracking server, with mlflow-skinny. Reading an s3:// artifact store
directly needs `[s3]`, exporting and the Tune callbacks `[tune]`, evaluation `[evaluate]`;
a local store (SQLite, MLflow's file store) needs MLflow's full install.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from types import ModuleType

from rllib_mlflow.errors import RLlibMLflowError

# The top-level module a missing extra leaves out -> that extra.
EXTRA_OF = {
    "ray": "tune",
    "torch": "tune",
    "tensorflow": "tune",
    "keras": "tune",
    "onnx": "tune",
    "onnxscript": "tune",
    "boto3": "s3",
    "pyarrow": "tune",
    "gymnasium": "evaluate",
    "matplotlib": "evaluate",
    "pandas": "evaluate",
    "sqlalchemy": "tune",  # a local SQLite store needs MLflow's full install
}


class MissingExtraError(RLlibMLflowError, ImportError):
    """A feature needs an extra that is not installed."""


def import_feature(module: str, feature: str, extra: str | None = None) -> ModuleType:
    """`importlib.import_module(module)`, or MissingExtraError naming what to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise missing_extra(error, feature, extra) from None


def missing_extra(error: ModuleNotFoundError, feature: str, extra: str | None = None) -> Exception:
    """The MissingExtraError for `error` (the extra `feature` needs, default the one that
    provides the missing module), or `error` itself when no extra provides it."""
    top = (error.name or "").split(".")[0]
    if top not in EXTRA_OF:
        return error
    extra = extra or EXTRA_OF[top]
    return MissingExtraError(
        f"{feature} needs {top}, which this install of rllib-mlflow leaves out: "
        f"pip install 'rllib-mlflow[{extra}]'"
    )


@functools.cache
def full_mlflow_installed() -> bool:
    """True with MLflow's full install (`mlflow`), not only mlflow-skinny."""
    try:
        importlib.metadata.distribution("mlflow")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def require_full_mlflow(store: str, shown_uri: str) -> None:
    """MissingExtraError, in one line, when `store` (e.g. "a SQLite database") at
    `shown_uri` needs MLflow's full install and only mlflow-skinny is installed."""
    if full_mlflow_installed():
        return
    raise MissingExtraError(
        f"{shown_uri} is {store}, which only MLflow's full install reads (this install of "
        "rllib-mlflow has mlflow-skinny): pip install mlflow, or start `mlflow server "
        f"--backend-store-uri {shown_uri}` and pass its http:// address."
    )
