"""Scratch directories for exports, named by the process that owns them, and the sweep of
those whose owner is gone.

An export is written to a scratch directory before upload and removed afterwards; a
process killed meanwhile (SIGKILL, an out-of-memory kill) cannot remove its own. The
owner's PID in the name tells the next worker, or `rllib-mlflow sync`, which are orphans.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rllib_mlflow import environment_variables as env
from rllib_mlflow.errors import RLlibMLflowError
from rllib_mlflow.redaction import get_logger

logger = get_logger(__name__)

EXPORT_PREFIX = "rllib_mlflow_export_"
_OWNED = re.compile(rf"^{EXPORT_PREFIX}(\d+)_")


@contextmanager
def export_scratch() -> Iterator[str]:
    """A directory for one registration's exports, in RLLIB_MLFLOW_TMPDIR (default TMPDIR),
    removed when the block ends. A full disk there raises an error that says so."""
    parent = env.RLLIB_MLFLOW_TMPDIR.value()
    with tempfile.TemporaryDirectory(prefix=f"{EXPORT_PREFIX}{os.getpid()}_", dir=parent) as d:
        try:
            yield d
        except Exception as error:
            if isinstance(error, DiskFullError) or not _disk_full(error):
                raise
            raise DiskFullError(
                f"No space left on device in {os.path.dirname(d)} (RLLIB_MLFLOW_TMPDIR, where "
                f"exports are written before upload; {_size(Path(d)) / 1e6:.1f} MB written "
                "when it filled). Free space there or point RLLIB_MLFLOW_TMPDIR at a larger "
                "disk, then register the checkpoint again (the callback's journal keeps it "
                "for `rllib-mlflow sync`)."
            ) from None


class DiskFullError(RLlibMLflowError, OSError):
    """The scratch disk filled up while exporting."""


def _disk_full(error: BaseException) -> bool:
    """ENOSPC in `error` or in what it was raised from: exporters wrap what they meet (the
    ONNX tracer's refusal holds the OSError it got). Only OSErrors count: a server's answer
    about its own full disk is not ours."""
    cause: BaseException | None = error
    for _ in range(10):  # a chain is short; a cycle must not hang us
        if cause is None:
            return False
        # h5py and TensorFlow report ENOSPC inside their own messages, with no errno.
        text = str(cause)
        if isinstance(cause, OSError) and (
            cause.errno == errno.ENOSPC or "No space left on device" in text or "[Errno 28]" in text
        ):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def sweep_orphaned_exports() -> int:
    """Remove the export scratch directories of processes that no longer run; returns how
    many bytes that freed. Never fails: a directory that cannot be removed stays."""
    parent = Path(env.RLLIB_MLFLOW_TMPDIR.value() or tempfile.gettempdir())
    freed = 0
    for directory in parent.glob(f"{EXPORT_PREFIX}*"):
        owner = _OWNED.match(directory.name)
        if owner is None or _running(int(owner.group(1))) or not directory.is_dir():
            continue
        size = _size(directory)
        shutil.rmtree(directory, ignore_errors=True)
        if not directory.exists():
            freed += size
    if freed:
        logger.info("removed %d bytes of exports left by stopped processes", freed)
    return freed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: running
        return True
    return True
