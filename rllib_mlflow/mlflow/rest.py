"""The few MlflowClient calls rllib-mlflow makes on the fast paths, over MLflow's REST API.

`import mlflow` alone takes over a second, more than the whole rest of loading a policy,
and the Tune driver should not pay it before training starts. Against an HTTP(S) tracking
server, `RestClient` therefore answers the lookups of `rllib_mlflow.mlflow.registry` and the
checks of `rllib_mlflow.mlflow.preflight` like an MlflowClient would, and `load_policy` downloads
just the files its backend needs through the server's artifact proxy. Any other store,
artifact location or TLS setup goes through MLflow itself (`rest_client` returns None).

It stands on requests and urllib3's `Retry`, with MLflow's own client settings: credentials
from MLFLOW_TRACKING_USERNAME / _PASSWORD, MLFLOW_TRACKING_TOKEN or ~/.mlflow/credentials,
TLS from MLFLOW_TRACKING_INSECURE_TLS / _SERVER_CERT_PATH / _CLIENT_CERT_PATH, retries
from MLFLOW_HTTP_REQUEST_MAX_RETRIES / _BACKOFF_FACTOR (fewer by default: a dead server
is reported in seconds, not minutes).
"""

from __future__ import annotations

import configparser
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rllib_mlflow.errors import TrackingError, UnsafePathError
from rllib_mlflow.paths import inside
from rllib_mlflow.redaction import mask_urls

_RETRIES = 2  # MLflow's default is 7 with backoff: minutes before a dead server is reported
_BACKOFF = 0.5
_TIMEOUT_SECONDS = 30  # per connection and read
_CHUNK = 1 << 16
_MAX_JSON_BYTES = 256 << 20
DEFAULT_MAX_FILE_BYTES = 2 << 30


def load_deadline_seconds() -> float:
    """How long a whole load may take: MLFLOW_HTTP_REQUEST_TIMEOUT (MLflow's default 120 s)."""
    return float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 120)


def max_file_bytes() -> int:
    """The largest file a load downloads: RLLIB_MLFLOW_MAX_FILE_BYTES (default 2 GiB)."""
    return int(os.environ.get("RLLIB_MLFLOW_MAX_FILE_BYTES") or DEFAULT_MAX_FILE_BYTES)


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


@dataclass
class ModelVersion:
    """The fields of MLflow's ModelVersion that rllib-mlflow reads."""

    name: str
    version: str
    creation_timestamp: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelVersion:
        return cls(
            name=data["name"],
            version=str(data["version"]),
            creation_timestamp=int(data.get("creation_timestamp", 0)),
            tags={t["key"]: t.get("value", "") for t in data.get("tags", [])},
            aliases=list(data.get("aliases", [])),
        )


@dataclass
class RegisteredModel:
    name: str
    aliases: dict[str, str]


class _Page(list):
    """A list of search results with the token of the next page, like MLflow's PagedList."""

    def __init__(self, items: list, token: str | None):
        super().__init__(items)
        self.token = token


def rest_client(tracking_uri: str | None, **limits: Any) -> RestClient | None:
    """A RestClient for an HTTP(S) tracking URI (default: MLFLOW_TRACKING_URI), else None."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")) or "@" in urllib.parse.urlparse(uri).netloc:
        return None  # credentials in the URI are MLflow's business
    return RestClient(uri, **limits)


@dataclass
class Experiment:
    experiment_id: str
    name: str


class RestClient:
    """A few MlflowClient methods against one tracking server, authenticated as MLflow's
    client would be (MLFLOW_TRACKING_USERNAME / _PASSWORD, or MLFLOW_TRACKING_TOKEN)."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        deadline_s: float | None = None,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ):
        self.tracking_uri = tracking_uri.rstrip("/")
        self._session = _session()
        # Every request of this client ends by then, however slowly a server answers.
        self._deadline = None if deadline_s is None else time.monotonic() + deadline_s
        self._deadline_s = deadline_s
        self.max_file_bytes = max_file_bytes

    # -- registered models and versions ----------------------------------------------------

    def get_model_version(self, name: str, version: str) -> ModelVersion:
        answer = self._get("model-versions/get", name=name, version=version)
        return ModelVersion.from_json(answer["model_version"])

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        answer = self._get("registered-models/alias", name=name, alias=alias)
        return ModelVersion.from_json(answer["model_version"])

    def search_model_versions(
        self, filter_string: str, max_results: int = 1000, page_token: str | None = None
    ) -> _Page:
        query = {"filter": filter_string, "max_results": max_results}
        answer = self._get("model-versions/search", **query, page_token=page_token)
        versions = [ModelVersion.from_json(v) for v in answer.get("model_versions", [])]
        return _Page(versions, answer.get("next_page_token") or None)

    def get_registered_model(self, name: str) -> RegisteredModel:
        model = self._get("registered-models/get", name=name)["registered_model"]
        aliases = {a["alias"]: str(a["version"]) for a in model.get("aliases", [])}
        return RegisteredModel(name=model["name"], aliases=aliases)

    def search_registered_models(self, max_results: int = 100) -> list[dict[str, Any]]:
        answer = self._get("registered-models/search", max_results=max_results)
        return answer.get("registered_models", [])

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self._post("registered-models/set-tag", name=name, key=key, value=value)

    # -- experiments ------------------------------------------------------------------------

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        try:
            answer = self._get("experiments/get-by-name", experiment_name=name)
        except RestApiError as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return Experiment(answer["experiment"]["experiment_id"], answer["experiment"]["name"])

    def get_experiment(self, experiment_id: str) -> Experiment:
        experiment = self._get("experiments/get", experiment_id=experiment_id)["experiment"]
        return Experiment(experiment["experiment_id"], experiment["name"])

    def create_experiment(self, name: str) -> str:
        return self._post("experiments/create", name=name)["experiment_id"]

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self._post(
            "experiments/set-experiment-tag", experiment_id=experiment_id, key=key, value=value
        )

    # -- artifacts ----------------------------------------------------------------------------

    def download_uri(self, name: str, version: str) -> str:
        answer = self._get("model-versions/get-download-uri", name=name, version=version)
        return answer["artifact_uri"]

    def proxied_artifact_path(self, artifact_uri: str) -> str | None:
        """The path below the server's artifact proxy, for an `mlflow-artifacts:` URI that
        this server serves; None for any other location (s3://, a local path, ...)."""
        parsed = urllib.parse.urlparse(artifact_uri)
        own = urllib.parse.urlparse(self.tracking_uri).netloc
        if parsed.scheme != "mlflow-artifacts" or parsed.netloc not in ("", own):
            return None
        return parsed.path.strip("/")

    def download_artifact(self, path: str, local_dir: str, relative: str) -> str:
        """Fetch one file from the server's artifact proxy to `local_dir/relative`, which
        must stay inside `local_dir`; at most `max_file_bytes`, streamed to disk."""
        local_file = inside(local_dir, relative)
        url = f"{self.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/{urllib.parse.quote(path)}"
        os.makedirs(os.path.dirname(local_file), exist_ok=True)
        with open(local_file, "wb") as stream:
            self._request(url, sink=stream.write, max_bytes=self.max_file_bytes)
        return local_file

    def download_tree(self, path: str, local_dir: str, relative: str) -> None:
        """Fetch every file below `path` into `local_dir/relative`."""
        for name in self._list_files(path):
            self.download_artifact(f"{path}/{name}", local_dir, f"{relative}/{name}")

    def _list_files(self, path: str, prefix: str = "") -> list[str]:
        query = urllib.parse.urlencode({"path": f"{path}/{prefix}".rstrip("/")})
        url = f"{self.tracking_uri}/api/2.0/mlflow-artifacts/artifacts?{query}"
        files = []
        for entry in _json_object(self._request(url)).get("files", []):
            name = str(entry.get("path", "")).rsplit("/", 1)[-1]
            if name in ("", ".", "..") or "\\" in name:
                raise UnsafePathError(
                    f"Refusing the artifact listing of {path}: it names the entry {name!r}, "
                    "which is no file name. The model's artifacts may have been tampered with."
                )
            relative = f"{prefix}{name}"
            files += self._list_files(path, relative + "/") if entry.get("is_dir") else [relative]
        return files

    # -- HTTP -------------------------------------------------------------------------------

    def _get(self, endpoint: str, **query: Any) -> dict[str, Any]:
        params = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        url = f"{self.tracking_uri}/api/2.0/mlflow/{endpoint}?{params}"
        return _json_object(self._request(url))

    def _post(self, endpoint: str, **body: Any) -> dict[str, Any]:
        url = f"{self.tracking_uri}/api/2.0/mlflow/{endpoint}"
        return _json_object(self._request(url, json.dumps(body).encode()) or b"{}")

    def _request(
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
        return mask_urls(self.tracking_uri)


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
    retry = Retry(
        total=int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") or _RETRIES),
        backoff_factor=float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR") or _BACKOFF),
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,  # our POSTs (tags, get-or-create) are safe to repeat
        raise_on_status=False,
    )
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    session.headers.update(_auth_headers())
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        session.verify = False
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        session.verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    if os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        session.cert = os.environ["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
    return session


def _auth_headers() -> dict[str, str]:
    """MLflow's credentials: the environment first, then ~/.mlflow/credentials."""
    import base64

    saved = _credentials_file()
    username = os.environ.get("MLFLOW_TRACKING_USERNAME") or saved.get("mlflow_tracking_username")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or saved.get("mlflow_tracking_password")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if username and password:
        pair = base64.b64encode(f"{username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def _credentials_file() -> dict[str, str]:
    """The [mlflow] section of ~/.mlflow/credentials, where `mlflow login` saves them."""
    parser = configparser.ConfigParser()
    parser.read(os.path.expanduser(os.path.join("~", ".mlflow", "credentials")))
    return dict(parser["mlflow"]) if parser.has_section("mlflow") else {}
