"""Retry what a retry can fix, and nothing else.

A tracking server restarting, an object store throttling or a dropped connection pass
within seconds to minutes; a refused permission, an invalid name, a full disk or a bug do
not, and retrying them would only cost a minute per checkpoint before the same failure.
"""

from __future__ import annotations

import errno
import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from rllib_mlflow.console import one_line
from rllib_mlflow.errors import RLlibMLflowError, TrackingError
from rllib_mlflow.redaction import get_logger

logger = get_logger(__name__)
T = TypeVar("T")

_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EAGAIN,
}
_THROTTLING = ("Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded")


def is_transient(error: BaseException) -> bool:
    """True for faults that may pass: unreachable or overloaded servers, timeouts, dropped
    connections, HTTP 429 and 5xx answers, S3 throttling."""
    if isinstance(error, RLlibMLflowError):
        status = getattr(error, "status", None)
        return isinstance(error, TrackingError) and (status is None or _retryable(status))
    if isinstance(error, ConnectionError | TimeoutError | http.client.HTTPException):
        return True
    if isinstance(error, json.JSONDecodeError):  # a body cut short by a server going down
        return True
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return True
    status = _http_status(error)
    if status is not None:
        return _retryable(status)
    name = type(error).__name__
    module = type(error).__module__ or ""
    if module.startswith(("requests", "urllib3", "botocore")):
        return "Connection" in name or "Timeout" in name or "Endpoint" in name
    cause = error.__cause__ or error.__context__  # e.g. MLflow wrapping a dropped connection
    return cause is not None and is_transient(cause)


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def with_retries(fn: Callable[[], T], attempts: int = 6, first_delay: float = 2.0) -> T:
    """`fn()`, retried on transient faults with exponential backoff; permanent ones raise
    at once. The defaults wait 2 + 4 + 8 + 16 + 32 = 62 s in all, so that a tracking server
    restarted within a minute loses nothing."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            result = fn()
        except Exception as error:
            if attempt == attempts - 1 or not is_transient(error):
                raise
            OUTAGE.failed(error, delay)
        else:
            OUTAGE.ended()
            return result
        time.sleep(delay)
        delay = min(delay * 2, 60.0)
    raise AssertionError("unreachable")


class Outage:
    """Whether the services retried here are unreachable: told once when that begins, every
    30 s while it lasts (MLflow's own retries may hold one attempt for minutes), and once
    when it ends; never once per retry of every call."""

    REPORT_EVERY_S = 30.0

    def __init__(self) -> None:
        self.since: float | None = None
        self._lock = threading.Lock()

    def failed(self, error: BaseException, delay: float) -> None:
        with self._lock:
            begins = self.since is None
            if begins:
                self.since = time.monotonic()
        if not begins:
            logger.debug("%s; retrying in %.0f s", one_line(error), delay)
            return
        logger.warning(
            "cannot reach the tracking server or artifact store (%s); retrying, next attempt "
            "in %.0f s.",
            one_line(error, limit=300),
            delay,
        )
        threading.Thread(target=self._remind, name="rllib-mlflow-outage", daemon=True).start()

    def ended(self) -> None:
        with self._lock:
            if self.since is None:
                return
            lasted, self.since = time.monotonic() - self.since, None
        logger.warning("reachable again after %.0f s of retrying; carrying on.", lasted)

    def _remind(self) -> None:
        since = self.since
        while True:
            time.sleep(self.REPORT_EVERY_S)
            with self._lock:
                if self.since != since:  # ended (and maybe begun again: its own reminder)
                    return
            assert since is not None
            logger.warning("still unreachable, for %.0f s now; retrying.", time.monotonic() - since)


OUTAGE = Outage()  # one per process: every call retried here sees the same servers


def _http_status(error: BaseException) -> int | None:
    """The HTTP status an MLflow, requests or botocore error carries, if any."""
    status_code = getattr(error, "get_http_status_code", None)  # MlflowException's
    if status_code is not None:
        try:
            return int(status_code())
        except (TypeError, ValueError):
            return None
    response = getattr(error, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        code = response.get("Error", {}).get("Code", "")
        if code in _THROTTLING:
            return 429
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    status = getattr(response, "status_code", None)  # requests
    return int(status) if isinstance(status, int) else None
