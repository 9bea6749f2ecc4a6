"""An outage of the tracking server or artifact store, told to the person waiting: once
when it begins, every 30 s while it lasts, once when a call gets through again; never once
per retry of every call.

Two layers retry: ours (`retries.with_retries`, a whole call: a registration, a metrics
batch) and, beneath it, MLflow's REST client, which repeats each HTTP request itself
(urllib3's Retry: MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7, backoff to about 4 minutes)
and tells nobody. An outage MLflow absorbed was therefore silent. urllib3 records each of
its retries at debug level; `watch_http_retries` reads those records while one of our
calls runs, so that the outage is told as soon as its first request fails. The waiting
stays where it was, and so does the budget: MLflow repeats one request, where ours would
redo a whole registration (its export too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rllib_mlflow.console import one_line
from rllib_mlflow.redaction import get_logger

logger = get_logger(__name__)

# urllib3 logs "Incremented Retry for (url=...): Retry(...)" here on every retry it makes.
URLLIB3_RETRY_LOGGER = "urllib3.util.retry"


class Outage:
    """Whether the services retried here are unreachable, and the lines that say so."""

    REPORT_EVERY_S = 30.0

    def __init__(self) -> None:
        self.since: float | None = None
        self._calls = 0  # our retried calls in progress: only their HTTP retries count
        self._lock = threading.Lock()

    @contextmanager
    def watching(self) -> Iterator[None]:
        """While the block runs, MLflow's HTTP retries are ours to tell."""
        with self._lock:
            self._calls += 1
        try:
            yield
        finally:
            with self._lock:
                self._calls -= 1

    def http_retry(self, cause: BaseException | str, delay: float) -> None:
        """A retry of MLflow's HTTP client; ignored outside our calls (in a user's own
        process it may be someone else's request)."""
        if self._calls:
            self.failed(cause, delay)

    def failed(self, cause: BaseException | str, delay: float) -> None:
        with self._lock:
            begins = self.since is None
            if begins:
                self.since = time.monotonic()
        text = cause if isinstance(cause, str) else one_line(cause, limit=300)
        if not begins:
            logger.debug("%s; retrying in %.0f s", text, delay)
            return
        logger.warning(
            "cannot reach the tracking server or artifact store (%s); retrying, %s.",
            text,
            "next attempt at once" if delay < 0.5 else f"next attempt in {delay:.0f} s",
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


class _HttpRetries(logging.Filter):
    """On urllib3's retry logger (set to debug so that it makes the records): tells OUTAGE
    of each retry, and passes on only the records its level let through before."""

    def __init__(self, own_level: int) -> None:
        super().__init__()
        self._own_level = own_level  # NOTSET: the level it inherits, read at each record

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            _tell(record)
        except Exception:  # a request must never fail because of what we make of its logs
            pass
        parent = logging.getLogger(URLLIB3_RETRY_LOGGER).parent
        level = self._own_level or (parent.getEffectiveLevel() if parent else logging.WARNING)
        return record.levelno >= level


def _tell(record: logging.LogRecord) -> None:
    from urllib3.util.retry import Retry

    retry = record.args[-1] if isinstance(record.args, tuple) and record.args else None
    if not isinstance(retry, Retry) or not retry.history:
        return
    last = retry.history[-1]
    if last.redirect_location is not None:  # a redirect, not a fault
        return
    cause = (
        last.error
        if last.error is not None
        else f"HTTP {last.status} from {str(last.url).split('?')[0]}"
    )
    OUTAGE.http_retry(cause, retry.get_backoff_time())


_watched = threading.Lock()
_watching = False


def watch_http_retries() -> None:
    """Have MLflow's own HTTP retries tell OUTAGE (once per process)."""
    global _watching
    with _watched:
        if _watching:
            return
        _watching = True
    retries = logging.getLogger(URLLIB3_RETRY_LOGGER)
    retries.addFilter(_HttpRetries(retries.level))
    retries.setLevel(logging.DEBUG)
