"""HTTP to one MLflow server for `RestClient`: MLflow's client settings, and requests
that end by a deadline and refuse bodies past a size.

It stands on requests and urllib3's `Retry`, with MLflow's own client settings: credentials
from MLFLOW_TRACKING_USERNAME / _PASSWORD, MLFLOW_TRACKING_TOKEN or ~/.mlflow/credentials,
TLS from MLFLOW_TRACKING_INSECURE_TLS / _SERVER_CERT_PATH / _CLIENT_CERT_PATH, retries
from MLFLOW_HTTP_REQUEST_MAX_RETRIES / _BACKOFF_FACTOR (fewer by default: a dead server
is reported in seconds, not minutes). A server can answer slowly or without end, so every
body is streamed against the client's deadline and a size limit.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from rllib_mlflow import environment_variables as env
from rllib_mlflow.errors import TrackingError
from rllib_mlflow.redaction import mask_urls

_TIMEOUT_SECONDS = 30  # per connection and read
_CHUNK = 1 << 16
_MAX_JSON_BYTES = 256 << 20
DEFAULT_MAX_FILE_BYTES = env.DEFAULT_MAX_FILE_BYTES


def load_deadline_seconds() -> float:
    """How long a whole load may take: MLFLOW_HTTP_REQUEST_TIMEOUT (MLflow's default 120 s)."""
    return float(env.MLFLOW_HTTP_REQUEST_TIMEOUT.value() or 0)


def max_file_bytes() -> int:
    """The largest file a load downloads: RLLIB_MLFLOW_MAX_FILE_BYTES (default 2 GiB)."""
    return int(env.RLLIB_MLFLOW_MAX_FILE_BYTES.value() or 0)


class RestApiError(Exception):
    """The server answered with an error (e.g. RESOURCE_DOES_NOT_EXIST)."""

    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(f"{error_code}: {message}")
        self.status, self.error_code, self.message = status, error_code, message


class RestPermissionError(TrackingError):
    """The server refused our credentials (401) or the operation (403)."""

    def __init__(self, text: str, status: int, error_code: str, message: str):
        super().__init__(text)
        self.status, self.error_code, self.message = status, error_code, message


class Transport:
    """Requests to the server at `base_url`; every one of them ends by `deadline_s` after
    this object is made, however slowly the server answers."""

    def __init__(self, base_url: str, deadline_s: float | None = None):
        self.base_url = base_url
        self._session = _session()
        self._deadline = None if deadline_s is None else time.monotonic() + deadline_s
        self._deadline_s = deadline_s

    def get_json(self, url: str) -> dict[str, Any]:
        return _json_object(self.request(url))

    def post_json(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return _json_object(self.request(url, json.dumps(body).encode()) or b"{}")

    def request(
        self,
        url: str,
        body: bytes | None = None,
        sink: Callable[[bytes], Any] | None = None,
        max_bytes: int = _MAX_JSON_BYTES,
    ) -> bytes:
        """GET (or POST `body`), retried by urllib3 on connection errors and 5xx/429. The
        answer goes to `sink` chunk by chunk (returning b"") or is returned whole."""
        import requests

        chunks: list[bytes] = []
        try:
            method = "POST" if body is not None else "GET"
            headers = {"Content-Type": "application/json"} if body is not None else {}
            timeout = self._read_timeout()
            with self._session.request(
                method, url, data=body, headers=headers, stream=True, timeout=timeout
            ) as answer:
                if answer.status_code >= 400:
                    raise self._api_error(answer)
                self._stream(answer, sink or chunks.append, max_bytes, url)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise self._failed(error) from error
        return b"".join(chunks)

    def _stream(self, answer, sink: Callable[[bytes], Any], max_bytes: int, url: str) -> None:
        """Pass the body to `sink`, refusing it past `max_bytes` or the deadline (a server
        trickling one byte at a time never trips a per-read timeout)."""
        length = answer.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise self._too_large(url, max_bytes)
        total = 0
        while chunk := self._read(answer):
            total += len(chunk)
            if total > max_bytes:
                raise self._too_large(url, max_bytes)
            if self._past_deadline():
                raise self._timed_out()
            sink(chunk)

    def _read(self, answer) -> bytes:
        """The next bytes of the body, as soon as any arrive."""
        from urllib3.exceptions import HTTPError

        try:
            return answer.raw.read1(_CHUNK, decode_content=True)
        except (HTTPError, OSError) as error:  # a dropped connection, a read timeout
            raise self._failed(error) from error

    def _failed(self, error: Exception) -> TrackingError:
        return self._timed_out() if self._past_deadline() else self._unreachable(error)

    def _read_timeout(self) -> float:
        if self._past_deadline():
            raise self._timed_out()
        if self._deadline is None:
            return _TIMEOUT_SECONDS
        return max(0.1, min(_TIMEOUT_SECONDS, self._deadline - time.monotonic()))

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def _timed_out(self) -> TrackingError:
        return TrackingError(
            f"The MLflow tracking server at {self._redacted()} did not finish answering within "
            f"{self._deadline_s:g} s. Set MLFLOW_HTTP_REQUEST_TIMEOUT (seconds) for slower "
            "servers, or check the server and the network."
        )

    def _too_large(self, url: str, max_bytes: int) -> TrackingError:
        path = urllib.parse.urlparse(url).path.rsplit("/artifacts/", 1)[-1]
        return TrackingError(
            f"Refusing {path!r} from {self._redacted()}: it is larger than {max_bytes:,} bytes. "
            "Set RLLIB_MLFLOW_MAX_FILE_BYTES if the model really is that large.",
            status=413,
        )

    def _unreachable(self, error: Exception) -> TrackingError:
        return TrackingError(
            f"Cannot reach the MLflow tracking server at {self._redacted()} "
            f"({type(error).__name__}). Start it, or set MLFLOW_TRACKING_URI to a "
            "reachable server."
        )

    def _api_error(self, answer) -> Exception:
        try:
            body = json.loads(answer.raw.read(1 << 16, decode_content=True) or b"{}")
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        code = str(body.get("error_code", answer.status_code))
        message = str(body.get("message", answer.reason))
        if answer.status_code in (401, 403):
            return RestPermissionError(
                f"The MLflow tracking server at {self._redacted()} refused the request "
                f"({answer.status_code} {code}: {message[:300]}). Check "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD and the user's permissions.",
                answer.status_code,
                code,
                message,
            )
        return RestApiError(answer.status_code, code, message)

    def _redacted(self) -> str:
        return mask_urls(self.base_url)


def _json_object(body: bytes) -> dict[str, Any]:
    """A JSON object answer; anything else is the server's fault, said so."""
    try:
        answer = json.loads(body)
    except ValueError as error:
        raise TrackingError(f"The tracking server answered with invalid JSON ({error}).") from error
    if not isinstance(answer, dict):
        raise TrackingError(f"The tracking server answered {type(answer).__name__}, not an object.")
    return answer


def _session():
    """A requests session set up as MLflow's own client would be."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    # Fewer retries than MLflow's 7 by default: a dead server is reported in seconds.
    retry = Retry(
        total=int(env.MLFLOW_HTTP_REQUEST_MAX_RETRIES.value() or 0),
        backoff_factor=float(env.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.value() or 0),
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,  # our POSTs (tags, get-or-create) are safe to repeat
        raise_on_status=False,
    )
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    session.headers.update(_auth_headers())
    if env.MLFLOW_TRACKING_INSECURE_TLS.enabled():
        session.verify = False
    elif server_certificates := env.MLFLOW_TRACKING_SERVER_CERT_PATH.value():
        session.verify = server_certificates
    if client_certificate := env.MLFLOW_TRACKING_CLIENT_CERT_PATH.value():
        session.cert = client_certificate
    return session


def _auth_headers() -> dict[str, str]:
    """MLflow's credentials (`environment_variables.credentials`) as a header."""
    import base64

    given = env.credentials()
    if given.username and given.password:
        pair = base64.b64encode(f"{given.username}:{given.password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    if given.token:
        return {"Authorization": f"Bearer {given.token}"}
    return {}
