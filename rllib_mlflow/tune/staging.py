"""Staged copies of checkpoints, so that Tune's `num_to_keep` cannot delete one before it
is exported, and a bound on them, so that a sweep checkpointing faster than it exports
cannot fill the driver's disk. On local storage the copies are hard links (no extra space
until Tune deletes its own names); the bound counts their bytes all the same.

Past the bound the checkpoint is not copied: the task reads the checkpoint itself, which
is safe unless Tune deletes it first (with `num_to_keep`, a checkpoint that falls out of the
kept ones before its turn comes). Then that registration fails and says so, and the
journal keeps its entry. Training never waits for staging room.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from rllib_mlflow import environment_variables as env
from rllib_mlflow.redaction import get_logger

logger = get_logger(__name__)

STAGING_DIR = ".rllib_mlflow_staging"
DEFAULT_MAX_STAGED = 64


@dataclass(frozen=True)
class StagingLimit:
    """At most `count` staged checkpoints holding at most `bytes` at once (None: no bound)."""

    count: int | None = DEFAULT_MAX_STAGED
    bytes: int | None = None

    @classmethod
    def from_env(cls, count: int | None = None, size: int | None = None) -> StagingLimit:
        """Explicit values, else RLLIB_MLFLOW_MAX_STAGED / RLLIB_MLFLOW_MAX_STAGED_BYTES,
        else the defaults."""
        count = count if count is not None else _env_int(env.RLLIB_MLFLOW_MAX_STAGED)
        size = size if size is not None else _env_int(env.RLLIB_MLFLOW_MAX_STAGED_BYTES)
        return cls(DEFAULT_MAX_STAGED if count is None else count, size)


class Staging:
    """The staged copies not yet registered, and how much room they take."""

    def __init__(self, limit: StagingLimit):
        self.limit = limit
        self._sizes: dict[str, int] = {}  # staged path -> bytes
        self._lock = threading.Lock()
        self._warned = False
        self.peak_bytes = 0

    def stage(self, checkpoint, journal_dir: Path, trial_id: str, iteration: int) -> str | None:
        """Copy `checkpoint` (a `ray.tune.Checkpoint`) out of Tune's hands and return the
        copy's path, or None when the bound is reached (then read the checkpoint itself)."""
        if self._full():
            self._report_full(checkpoint.path)
            return None
        target = journal_dir / STAGING_DIR / trial_id / f"checkpoint_{iteration:06d}"
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy(checkpoint, target)
        with self._lock:
            self._sizes[str(target)] = _tree_size(target)
            self.peak_bytes = max(self.peak_bytes, sum(self._sizes.values()))
        return str(target)

    def release(self, path: str) -> None:
        """Delete a staged copy once its checkpoint is registered."""
        with self._lock:
            staged = self._sizes.pop(path, None) is not None
        if staged:
            shutil.rmtree(path, ignore_errors=True)

    def _usage(self) -> tuple[int, int]:
        """(staged copies, their bytes)."""
        with self._lock:
            return len(self._sizes), sum(self._sizes.values())

    def _full(self) -> bool:
        count, size = self._usage()
        return (self.limit.count is not None and count >= self.limit.count) or (
            self.limit.bytes is not None and size >= self.limit.bytes
        )

    def _report_full(self, path: str) -> None:
        how = logger.info if self._warned else logger.warning
        self._warned = True
        how(
            "staging is full (%s); %s is exported from where Tune keeps it. With num_to_keep, "
            "Tune may delete it before its turn: raise max_staged / RLLIB_MLFLOW_MAX_STAGED "
            "(or _BYTES) to keep copies.",
            self._describe(),
            path,
        )

    def _describe(self) -> str:
        count, size = self._usage()
        return f"{count} checkpoint(s), {size / 2**20:.1f} MiB"


def remove_registered_copies(journal_dir: Path, registered: list[str]) -> int:
    """Delete the staged copies among `registered` (the journal's registered checkpoints):
    the callback deletes each once registered, unless it was killed first or `sync`
    registered it. Returns the bytes freed; a copy that cannot be deleted stays."""
    staging = (journal_dir / STAGING_DIR).resolve()
    freed = 0
    for path in map(Path, registered):
        if path.resolve().parent.parent != staging or not path.is_dir():
            continue  # not a staged copy: the checkpoint itself, never ours to delete
        size = _tree_size(path)
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            freed += size
            _remove_if_empty(path.parent)
    _remove_if_empty(staging)
    return freed


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:  # not empty, or gone
        pass


def _copy(checkpoint, target: Path) -> None:
    """Hard links when the checkpoint is on this machine's disk: instant, no extra space, and
    the files live on when Tune deletes its own names. A real copy otherwise."""
    if checkpoint.filesystem.type_name == "local":
        try:
            shutil.copytree(checkpoint.path, target, copy_function=os.link)
            return
        except OSError:  # another filesystem, or links not allowed: copy
            shutil.rmtree(target, ignore_errors=True)
    checkpoint.to_directory(str(target))


def _tree_size(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _env_int(variable: env.Variable) -> int | None:
    name, value = variable.name, variable.text()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}.") from None
