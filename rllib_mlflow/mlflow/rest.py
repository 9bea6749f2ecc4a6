"""The few MlflowClient calls rllib-mlflow makes on the fast paths, over MLflow's REST API.

`import mlflow` alone takes over a second, more than the whole rest of loading a policy,
and the Tune driver should not pay it before training starts. Against an HTTP(S) tracking
server, `RestClient` therefore answers the lookups of `rllib_mlflow.mlflow.versions` and the
checks of `rllib_mlflow.mlflow.preflight` like an MlflowClient would, and `load_policy` downloads
just the files its backend needs through the server's artifact proxy. Any other store,
artifact location or TLS setup goes through MLflow itself (`rest_client` returns None).

The HTTP underneath (MLflow's credential, TLS and retry settings; deadlines and size limits)
is `rllib_mlflow.mlflow.transport`.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rllib_mlflow import environment_variables as env
from rllib_mlflow.errors import UnsafePathError
from rllib_mlflow.mlflow.transport import DEFAULT_MAX_FILE_BYTES, RestApiError, Transport
from rllib_mlflow.paths import inside


@dataclass
class ModelVersion:
    """The fields of MLflow's ModelVersion that rllib-mlflow reads."""

    name: str
    version: str
    creation_timestamp: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    source: str = ""  # `models:/<LoggedModel id>` for MLflow 3's versions

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelVersion:
        return cls(
            name=data["name"],
            version=str(data["version"]),
            creation_timestamp=int(data.get("creation_timestamp", 0)),
            tags={t["key"]: t.get("value", "") for t in data.get("tags", [])},
            aliases=list(data.get("aliases", [])),
            source=data.get("source", ""),
        )


@dataclass
class RegisteredModel:
    name: str
    aliases: dict[str, str]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RegisteredModel:
        aliases = {a["alias"]: str(a["version"]) for a in data.get("aliases", [])}
        return cls(name=data["name"], aliases=aliases)


_Item = TypeVar("_Item")


class _Page(list[_Item]):
    """A list of search results with the token of the next page, like MLflow's PagedList."""

    def __init__(self, items: list[_Item], token: str | None):
        super().__init__(items)
        self.token = token


def rest_client(tracking_uri: str | None, **limits: Any) -> RestClient | None:
    """A RestClient for an HTTP(S) tracking URI (`environment_variables.tracking_uri`),
    else None."""
    uri = env.tracking_uri(tracking_uri)
    if not uri.startswith(("http://", "https://")) or "@" in urllib.parse.urlparse(uri).netloc:
        return None  # credentials in the URI are MLflow's business
    return RestClient(uri, **limits)


@dataclass
class Experiment:
    experiment_id: str
    name: str


class RestClient:
    """A few MlflowClient methods against one tracking server, authenticated as MLflow's
    client would be (MLFLOW_TRACKING_USERNAME / _PASSWORD, or MLFLOW_TRACKING_TOKEN): a
    `registry_client.RegistryClient`, held to MlflowClient by tests/test_client_contract.py."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        deadline_s: float | None = None,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ):
        self.tracking_uri = tracking_uri.rstrip("/")
        self._http = Transport(self.tracking_uri, deadline_s)
        self.max_file_bytes = max_file_bytes

    # -- registered models and versions ----------------------------------------------------

    def get_model_version(self, name: str, version: str) -> ModelVersion:
        answer = self._get("model-versions/get", name=name, version=version)
        return ModelVersion.from_json(answer["model_version"])

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        answer = self._get("registered-models/alias", name=name, alias=alias)
        return ModelVersion.from_json(answer["model_version"])

    def search_model_versions(
        self,
        filter_string: str,
        max_results: int = 1000,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> _Page[ModelVersion]:
        query = {"filter": filter_string, "max_results": max_results, "order_by": order_by}
        answer = self._get("model-versions/search", **query, page_token=page_token)
        versions = [ModelVersion.from_json(v) for v in answer.get("model_versions", [])]
        return _Page(versions, answer.get("next_page_token") or None)

    def get_registered_model(self, name: str) -> RegisteredModel:
        answer = self._get("registered-models/get", name=name)
        return RegisteredModel.from_json(answer["registered_model"])

    def search_registered_models(
        self, filter_string: str | None = None, max_results: int = 100
    ) -> _Page[RegisteredModel]:
        query = {"filter": filter_string, "max_results": max_results}
        answer = self._get("registered-models/search", **query)
        models = [RegisteredModel.from_json(m) for m in answer.get("registered_models", [])]
        return _Page(models, answer.get("next_page_token") or None)

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self._post("registered-models/set-tag", name=name, key=key, value=value)

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self._post("registered-models/alias", name=name, alias=alias, version=str(version))

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._post("model-versions/set-tag", name=name, version=str(version), key=key, value=value)

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
            self._http.request(url, sink=stream.write, max_bytes=self.max_file_bytes)
        return local_file

    def download_tree(self, path: str, local_dir: str, relative: str) -> None:
        """Fetch every file below `path` into `local_dir/relative`."""
        for name in self._list_files(path):
            self.download_artifact(f"{path}/{name}", local_dir, f"{relative}/{name}")

    def _list_files(self, path: str, prefix: str = "") -> list[str]:
        query = urllib.parse.urlencode({"path": f"{path}/{prefix}".rstrip("/")})
        url = f"{self.tracking_uri}/api/2.0/mlflow-artifacts/artifacts?{query}"
        files = []
        for entry in self._http.get_json(url).get("files", []):
            name = str(entry.get("path", "")).rsplit("/", 1)[-1]
            if name in ("", ".", "..") or "\\" in name:
                raise UnsafePathError(
                    f"Refusing the artifact listing of {path}: it names the entry {name!r}, "
                    "which is no file name. The model's artifacts may have been tampered with."
                )
            relative = f"{prefix}{name}"
            files += self._list_files(path, relative + "/") if entry.get("is_dir") else [relative]
        return files

    # -- the JSON API ------------------------------------------------------------------------

    def _get(self, endpoint: str, **query: Any) -> dict[str, Any]:
        given = {k: v for k, v in query.items() if v is not None}
        params = urllib.parse.urlencode(given, doseq=True)  # a list: the key repeated
        return self._http.get_json(f"{self.tracking_uri}/api/2.0/mlflow/{endpoint}?{params}")

    def _post(self, endpoint: str, **body: Any) -> dict[str, Any]:
        return self._http.post_json(f"{self.tracking_uri}/api/2.0/mlflow/{endpoint}", body)
