"""Retry what a retry can fix, and nothing else.

A tracking server restarting, an object store throttling or a dropped connection pass
within seconds to minutes; a refused permission, an invalid name, a full disk or a bug do
not, and retrying them would only cost a minute per checkpoint before the same failure.
"""

from __future__ import annotations

import errno
import http.client
import json
import time
from collections.abc import Callable
from typing import TypeVar

from rllib_mlflow.errors import RLlibMLflowError, TrackingError
from rllib_mlflow.outage import OUTAGE, watch_http_retries

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
    restarted within a minute loses nothing; each attempt may also wait on MLflow's own HTTP
    retries, which `outage` tells as they happen."""
    watch_http_retries()
    delay = first_delay
    with OUTAGE.watching():
        for attempt in range(attempts):
            try:
                result = fn()
            except Exception as error:
                if not is_transient(error):
                    if not isinstance(error, OSError):  # an answer: the server is back
                        OUTAGE.ended()
                    raise
                if attempt == attempts - 1:
                    raise
                OUTAGE.failed(error, delay)
            else:
                OUTAGE.ended()
                return result
            time.sleep(delay)
            delay = min(delay * 2, 60.0)
    raise AssertionError("unreachable")


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
