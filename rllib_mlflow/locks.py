"""Host-wide locks, so that processes on one machine (the callback's worker, `sync`,
`register`) never export and register the same checkpoint at once.

They only save duplicated work: the guarantee of one version per key across hosts is the
registry-side rule in `tracking._first_of_key`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock, Timeout

from rllib_mlflow import environment_variables as env
from rllib_mlflow.redaction import get_logger, mask_urls

logger = get_logger(__name__)
# One folder per host (RLLIB_MLFLOW_LOCK_DIR to change it, e.g. to a folder all processes
# of one machine share when their TMPDIRs differ).
LOCK_DIR = env.RLLIB_MLFLOW_LOCK_DIR.value() or os.path.join(
    tempfile.gettempdir(), "rllib-mlflow-locks"
)
WAIT_SECONDS = 900.0  # a stuck holder must not stop the others for good


@contextmanager
def host_lock(*parts: object) -> Iterator[None]:
    """Hold the lock named by `parts` (e.g. store, model, trial, iteration, module)."""
    name = "\x1f".join(mask_urls(str(p)) for p in parts)
    path = os.path.join(LOCK_DIR, hashlib.sha256(name.encode()).hexdigest()[:32] + ".lock")
    lock = FileLock(path, timeout=WAIT_SECONDS)
    try:
        os.makedirs(LOCK_DIR, exist_ok=True)
        lock.acquire()
    except (Timeout, OSError) as error:
        logger.warning("rllib-mlflow: no lock %s (%s); going on without it.", path, error)
        yield
        return
    try:
        yield
    finally:
        lock.release()
