"""Where a checkpoint lives: the URI recorded for it, and a local directory to read it from.

Remote checkpoints (s3:// and other pyarrow filesystems) are downloaded through Ray Tune's
`Checkpoint`; a failure to open one names the AWS credentials it may be missing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from rllib_mlflow.errors import CheckpointError

CheckpointLike = Any  # str | os.PathLike | ray.tune.Checkpoint


def checkpoint_uri(checkpoint: CheckpointLike) -> str:
    """A URI that names `checkpoint` where it lives (s3://..., or an absolute path)."""
    from ray.tune import Checkpoint

    if isinstance(checkpoint, Checkpoint):
        if checkpoint.filesystem.type_name == "local":
            return str(Path(checkpoint.path).resolve())
        return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"
    text = os.fspath(checkpoint)
    return text if "://" in text else str(Path(text).resolve())


def local_checkpoint_dir(checkpoint: CheckpointLike) -> str:
    """A local directory holding `checkpoint` (downloaded when it lives on S3 etc.)."""
    from ray.tune import Checkpoint

    if isinstance(checkpoint, Checkpoint):
        if checkpoint.filesystem.type_name == "local":
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
            os.environ.get(name)
            for name in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")
        )
        or Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
        .expanduser()
        .exists()
    )
    if configured:
        return ""
    return (
        ". No AWS credentials are set: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and AWS_ENDPOINT_URL for a non-AWS store such as SeaweedFS or MinIO) in the "
        "environment of this process"
    )
