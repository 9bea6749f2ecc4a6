"""The deadline and size limit of a load that reads an artifact store directly.

The same promises as the proxied path (`rllib_mlflow.mlflow.transport`): the whole load ends
within MLFLOW_HTTP_REQUEST_TIMEOUT seconds and no file larger than RLLIB_MLFLOW_MAX_FILE_BYTES
is copied, however slowly a mount or an object store answers or however large a file it names.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from rllib_mlflow.errors import TrackingError
from rllib_mlflow.paths import inside

CHUNK = 1 << 16
_PER_READ_SECONDS = 30  # per connection and read, as over HTTP


class Limits:
    """When the load must end and how large a file may be, checked chunk by chunk."""

    def __init__(self, deadline_s: float, max_file_bytes: int):
        self.deadline_s = deadline_s
        self.max_file_bytes = max_file_bytes
        self._deadline = time.monotonic() + deadline_s

    def read_timeout(self, where: str) -> float:
        """Seconds the next connection or read may take."""
        self.check_time(where)
        return max(0.1, min(_PER_READ_SECONDS, self._deadline - time.monotonic()))

    def check_time(self, where: str) -> None:
        if time.monotonic() > self._deadline:
            raise TrackingError(
                f"Reading the model's files from {where} did not finish within "
                f"{self.deadline_s:g} s. Set MLFLOW_HTTP_REQUEST_TIMEOUT (seconds) for slower "
                "stores, or check the store and the network."
            )

    def check_size(self, name: str, size: int, where: str) -> None:
        if size > self.max_file_bytes:
            raise TrackingError(
                f"Refusing {name!r} from {where}: it is larger than {self.max_file_bytes:,} "
                "bytes. Set RLLIB_MLFLOW_MAX_FILE_BYTES if the model really is that large.",
                status=413,
            )


def copy_limited(
    read: Callable[[int], bytes], local_dir: str, relative: str, where: str, limits: Limits
) -> str:
    """Copy what `read(n)` returns, until it returns b"", to `local_dir/relative` (which must
    stay inside `local_dir`), within the limits; a partial file is removed."""
    local_file = inside(local_dir, relative)
    os.makedirs(os.path.dirname(local_file), exist_ok=True)
    total = 0
    try:
        with open(local_file, "wb") as stream:
            while chunk := read(CHUNK):
                total += len(chunk)
                limits.check_size(relative, total, where)
                limits.check_time(where)
                stream.write(chunk)
    except BaseException:
        os.remove(local_file)
        raise
    return local_file
