"""Every environment variable rllib-mlflow reads, with its default and meaning, and the one
place that resolves the tracking and registry URIs and the credentials from them.

Like MLflow's own `mlflow.environment_variables`, each variable is read when asked for, not
at import: tests and `stores.bounded_http_retries` change the environment at run time. The
documentation's table of environment variables (docs/reference/environment-variables.md) is
`readme_table()`, put there when the site is built (scripts/mkdocs_hooks.py). MLflow's
variables keep MLflow's meaning and defaults, except where the meaning says otherwise.
"""

from __future__ import annotations

import configparser
import os
import sys
from dataclasses import dataclass

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's default, in the working directory
DEFAULT_MAX_FILE_BYTES = 2 << 30


@dataclass(frozen=True)
class Variable:
    """One environment variable: `default` is what an unset or empty value means in code
    (None: no value), `shown_default` what the documentation says when the default is computed."""

    name: str
    default: str | None
    meaning: str
    shown_default: str = ""

    def value(self) -> str | None:
        return os.environ.get(self.name) or self.default

    def text(self) -> str:
        """The value without surrounding blanks; a blank one means the default."""
        return os.environ.get(self.name, "").strip() or self.default or ""

    def enabled(self) -> bool:
        """MLflow's booleans: "true" or "1", in any case."""
        return self.text().lower() in ("1", "true")

    def readme_default(self) -> str:
        return self.shown_default or (f"`{self.default}`" if self.default else "unset")


_ALL: list[Variable] = []


def _variable(name: str, default: str | None, meaning: str, shown_default: str = "") -> Variable:
    variable = Variable(name, default, meaning, shown_default)
    _ALL.append(variable)
    return variable


# -- the tracking store and its credentials (MLflow's variables) ----------------------------
MLFLOW_TRACKING_URI = _variable(
    "MLFLOW_TRACKING_URI",
    None,
    "Where runs, LoggedModels and versions go, when no `tracking_uri` is passed.",
    f"`{DEFAULT_TRACKING_URI}` (or `mlflow.set_tracking_uri`'s)",
)
MLFLOW_REGISTRY_URI = _variable(
    "MLFLOW_REGISTRY_URI",
    None,
    "The model registry, when not the tracking store.",
    "the tracking URI",
)
MLFLOW_ALLOW_FILE_STORE = _variable(
    "MLFLOW_ALLOW_FILE_STORE", None, "`true` lets MLflow 3 use a file store (`mlruns/`)."
)
MLFLOW_EXPERIMENT_ID = _variable(
    "MLFLOW_EXPERIMENT_ID", None, "The callbacks' experiment, when no `experiment_name` is given."
)
MLFLOW_EXPERIMENT_NAME = _variable(
    "MLFLOW_EXPERIMENT_NAME",
    None,
    "As MLFLOW_EXPERIMENT_ID, by name.",
    "the Tune experiment's name",
)
MLFLOW_TRACKING_USERNAME = _variable(
    "MLFLOW_TRACKING_USERNAME", None, "Basic auth user (else `~/.mlflow/credentials`)."
)
MLFLOW_TRACKING_PASSWORD = _variable(
    "MLFLOW_TRACKING_PASSWORD", None, "Basic auth password (else `~/.mlflow/credentials`)."
)
MLFLOW_TRACKING_TOKEN = _variable(
    "MLFLOW_TRACKING_TOKEN", None, "Bearer token, when no user and password are set."
)
MLFLOW_TRACKING_INSECURE_TLS = _variable(
    "MLFLOW_TRACKING_INSECURE_TLS", None, "`true` skips verifying the server's TLS certificate."
)
MLFLOW_TRACKING_SERVER_CERT_PATH = _variable(
    "MLFLOW_TRACKING_SERVER_CERT_PATH", None, "CA bundle that verifies the server's certificate."
)
MLFLOW_TRACKING_CLIENT_CERT_PATH = _variable(
    "MLFLOW_TRACKING_CLIENT_CERT_PATH", None, "Client certificate (mutual TLS)."
)
# -- HTTP to the tracking server --------------------------------------------------------------
MLFLOW_HTTP_REQUEST_TIMEOUT = _variable(
    "MLFLOW_HTTP_REQUEST_TIMEOUT", "120", "Seconds a whole `load_policy` download may take."
)
MLFLOW_HTTP_REQUEST_MAX_RETRIES = _variable(
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "2",
    "Retries of a failed HTTP request (MLflow's client reads it too, default 7).",
    "`2` (our REST client)",
)
MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR = _variable(
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0.5", "Backoff between those retries."
)
# -- S3 artifacts -------------------------------------------------------------------------------
MLFLOW_S3_ENDPOINT_URL = _variable(
    "MLFLOW_S3_ENDPOINT_URL", None, "S3-compatible endpoint of the artifact store.", "AWS"
)
AWS_ENDPOINT_URL = _variable(
    "AWS_ENDPOINT_URL", None, "The endpoint named in messages when MLFLOW_S3_ENDPOINT_URL is unset."
)
MLFLOW_S3_IGNORE_TLS = _variable(
    "MLFLOW_S3_IGNORE_TLS", None, "`true` skips verifying the S3 endpoint's certificate."
)
MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE = _variable(
    "MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE", "auto", "boto's S3 addressing style (`path`, `virtual`)."
)
AWS_ACCESS_KEY_ID = _variable(
    "AWS_ACCESS_KEY_ID", None, "Unset (as the 3 below): an unreadable s3:// checkpoint hints at it."
)
AWS_PROFILE = _variable("AWS_PROFILE", None, "See AWS_ACCESS_KEY_ID.")
AWS_WEB_IDENTITY_TOKEN_FILE = _variable(
    "AWS_WEB_IDENTITY_TOKEN_FILE", None, "See AWS_ACCESS_KEY_ID."
)
AWS_SHARED_CREDENTIALS_FILE = _variable(
    "AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials", "See AWS_ACCESS_KEY_ID."
)
# -- rllib-mlflow's own ---------------------------------------------------------------------------
RLLIB_MLFLOW_EXPORT_WORKERS = _variable(
    "RLLIB_MLFLOW_EXPORT_WORKERS",
    None,
    "Export processes on the driver (each holds TensorFlow and torch).",
    "one per two cores, at most 4",
)
RLLIB_MLFLOW_EXPORT_ON = _variable(
    "RLLIB_MLFLOW_EXPORT_ON", "driver", "`driver`, or `cluster` (Ray actors on the nodes)."
)
RLLIB_MLFLOW_MAX_STAGED = _variable(
    "RLLIB_MLFLOW_MAX_STAGED", None, "Most checkpoints staged for export at once.", "64"
)
RLLIB_MLFLOW_MAX_STAGED_BYTES = _variable(
    "RLLIB_MLFLOW_MAX_STAGED_BYTES", None, "Most bytes staged for export at once.", "no limit"
)
RLLIB_MLFLOW_MAX_FILE_BYTES = _variable(
    "RLLIB_MLFLOW_MAX_FILE_BYTES",
    str(DEFAULT_MAX_FILE_BYTES),
    "Largest file `load_policy` downloads.",
    "2 GiB",
)
RLLIB_MLFLOW_TMPDIR = _variable(
    "RLLIB_MLFLOW_TMPDIR", None, "Where exports are written before upload.", "TMPDIR"
)
RLLIB_MLFLOW_TRUSTED_MODULES = _variable(
    "RLLIB_MLFLOW_TRUSTED_MODULES",
    None,
    "Comma-separated module prefixes whose classes a checkpoint may name and rllib-mlflow "
    "imports (a custom RLModule of yours); `*` trusts every checkpoint's code. Ray's own "
    "modules and those already imported need no entry.",
)
RLLIB_MLFLOW_LOCK_DIR = _variable(
    "RLLIB_MLFLOW_LOCK_DIR",
    None,
    "Folder of the per-host locks (share it when processes' TMPDIRs differ).",
    "TMPDIR/rllib-mlflow-locks",
)
# Read by policy/serving.py itself: that folder is copied standalone into every logged model.
OMP_NUM_THREADS = _variable(
    "OMP_NUM_THREADS",
    None,
    "Threads of a loaded policy's ONNX Runtime or LiteRT session.",
    "all cores",
)

VARIABLES: tuple[Variable, ...] = tuple(_ALL)


def tracking_uri(explicit: str | None = None) -> str:
    """`explicit`, else MLFLOW_TRACKING_URI, else what `mlflow.set_tracking_uri` set (when
    MLflow is loaded: importing it here would cost a second), else sqlite:///mlflow.db."""
    if explicit:
        return explicit
    if from_environment := MLFLOW_TRACKING_URI.value():
        return from_environment
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and hasattr(mlflow, "get_tracking_uri"):
        return mlflow.get_tracking_uri()
    return DEFAULT_TRACKING_URI


def registry_uri(explicit: str | None = None, tracking: str | None = None) -> str:
    """`explicit`, else MLFLOW_REGISTRY_URI, else the tracking URI `tracking`, else what
    `mlflow.set_registry_uri` set (when MLflow is loaded), else `tracking_uri()`."""
    if chosen := explicit or MLFLOW_REGISTRY_URI.value() or tracking:
        return chosen
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and hasattr(mlflow, "get_registry_uri"):
        return mlflow.get_registry_uri()
    return tracking_uri()


@dataclass(frozen=True)
class Credentials:
    """MLflow's credentials for a tracking server; its repr never shows the secrets."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***, token=***)"


def credentials() -> Credentials:
    """The environment first, then the [mlflow] section of ~/.mlflow/credentials, where
    `mlflow login` saves them."""
    saved = _credentials_file()
    return Credentials(
        username=MLFLOW_TRACKING_USERNAME.value() or saved.get("mlflow_tracking_username"),
        password=MLFLOW_TRACKING_PASSWORD.value() or saved.get("mlflow_tracking_password"),
        token=MLFLOW_TRACKING_TOKEN.value(),
    )


def _credentials_file() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(os.path.expanduser(os.path.join("~", ".mlflow", "credentials")))
    return dict(parser["mlflow"]) if parser.has_section("mlflow") else {}


def readme_table() -> str:
    """The documentation's table of environment variables, one row per variable."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{v.name}` | {v.readme_default()} | {v.meaning} |" for v in VARIABLES]
    return "\n".join(rows)
