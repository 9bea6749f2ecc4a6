"""Where a checkpoint lives: the URI recorded for it, and a local directory to read it from.

Remote checkpoints (s3:// and other pyarrow filesystems) are downloaded through Ray Tune's
`Checkpoint`; a failure to open one names the AWS credentials it may be missing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from rllib_mlflow import environment_variables as env
from rllib_mlflow.errors import CheckpointError

CheckpointLike = Any  # str | os.PathLike | ray.tune.Checkpoint


def checkpoint_uri(checkpoint: CheckpointLike) -> str:
    """A URI that names `checkpoint` where it lives (s3://..., or an absolute path)."""
    from ray.tune import Checkpoint

    if isinstance(checkpoint, Checkpoint):
        if _filesystem_type(checkpoint) == "local":
            return str(Path(checkpoint.path).resolve())
        return f"{_filesystem_type(checkpoint)}://{checkpoint.path}"
    text = os.fspath(checkpoint)
    return text if "://" in text else str(Path(text).resolve())


def _filesystem_type(checkpoint: Any) -> str:
    """The pyarrow filesystem of a `ray.tune.Checkpoint` ("local", "s3", ...). Ray types it
    Optional, yet its constructor always sets one (from the path when not given)."""
    filesystem = checkpoint.filesystem
    return "local" if filesystem is None else filesystem.type_name


def local_checkpoint_dir(checkpoint: CheckpointLike) -> str:
    """A local directory holding `checkpoint` (downloaded when it lives on S3 etc.)."""
    from ray.tune import Checkpoint

    if isinstance(checkpoint, Checkpoint):
        if _filesystem_type(checkpoint) == "local":
            return checkpoint.path
        return checkpoint.to_directory(tempfile.mkdtemp(prefix="rllib_mlflow_ckpt_"))
    text = os.fspath(checkpoint)
    if "://" in text and not text.startswith("file://"):
        try:
            remote = Checkpoint(text)
            return remote.to_directory(tempfile.mkdtemp(prefix="rllib_mlflow_ckpt_"))
        except Exception as error:
            raise CheckpointError(
                f"Cannot open checkpoint URI {text!r}: {error}{_credentials_hint(text)}"
            ) from error
    return text.removeprefix("file://")


def _credentials_hint(uri: str) -> str:
    """What to set when an s3:// checkpoint cannot be read and no AWS credentials are set."""
    if not uri.startswith("s3://"):
        return ""
    configured = (
        any(
            v.value()
            for v in (env.AWS_ACCESS_KEY_ID, env.AWS_PROFILE, env.AWS_WEB_IDENTITY_TOKEN_FILE)
        )
        or Path(env.AWS_SHARED_CREDENTIALS_FILE.value() or "").expanduser().exists()
    )
    if configured:
        return ""
    return (
        ". No AWS credentials are set: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and AWS_ENDPOINT_URL for a non-AWS store such as SeaweedFS or MinIO) in the "
        "environment of this process"
    )
