"""Where `load_policy` reads a version's files from, by the artifact location the tracking
server reports: through the server's artifact proxy (`mlflow-artifacts:`), or straight from
the store when the server does not proxy it (``--no-serve-artifacts``): a local or mounted
path, or ``s3://`` with boto3 (``pip install 'rllib-mlflow[s3]'``).

Every source copies one file or one folder below the model's folder into a local folder,
the same way: paths confined on both sides, within the load's deadline and size limit.
Other stores (gs://, wasbs://, ...) are left to MLflow's full install, when it is there.
"""

from __future__ import annotations

import urllib.parse
from typing import Protocol

from rllib_mlflow.extras import MissingExtraError, full_mlflow_installed
from rllib_mlflow.mlflow.artifact_limits import Limits
from rllib_mlflow.mlflow.local_artifacts import LocalArtifacts
from rllib_mlflow.mlflow.rest import RestClient
from rllib_mlflow.mlflow.s3_artifacts import S3Artifacts

# Stores MLflow's full install reads, with the library it needs for each.
_MLFLOW_STORES = {
    "gs": "google-cloud-storage",
    "wasbs": "azure-storage-blob azure-identity",
    "abfss": "azure-storage-file-datalake azure-identity",
    "hdfs": "pyarrow",
    "viewfs": "pyarrow",
}


class ArtifactSource(Protocol):
    """The files below one model's folder in an artifact store."""

    def describe(self) -> str: ...

    def fetch(self, relative: str, local_dir: str) -> str:
        """Copy the file `relative` to `local_dir/relative`; its local path."""
        ...

    def fetch_tree(self, relative: str, local_dir: str) -> None:
        """Copy every file below the folder `relative` to `local_dir/relative/...`."""
        ...


class ProxiedArtifacts:
    """The model's folder behind the tracking server's artifact proxy."""

    def __init__(self, rest: RestClient, root: str):
        self.rest, self.root = rest, root

    def describe(self) -> str:
        return f"{self.rest.tracking_uri} (mlflow-artifacts:/{self.root})"

    def fetch(self, relative: str, local_dir: str) -> str:
        return self.rest.download_artifact(f"{self.root}/{relative}", local_dir, relative)

    def fetch_tree(self, relative: str, local_dir: str) -> None:
        self.rest.download_tree(f"{self.root}/{relative}", local_dir, relative)


def artifact_source(rest: RestClient, artifact_uri: str, limits: Limits) -> ArtifactSource | None:
    """The source of the model at `artifact_uri`; None when only MLflow's full install (which
    is installed) reads that store."""
    proxied = rest.proxied_artifact_path(artifact_uri)
    if proxied is not None:
        return ProxiedArtifacts(rest, proxied)
    local = local_source(artifact_uri, limits)
    if local is not None:
        return local
    scheme = urllib.parse.urlparse(artifact_uri).scheme
    if scheme == "s3":
        return S3Artifacts(artifact_uri, limits)
    if full_mlflow_installed():
        return None
    raise MissingExtraError(
        f"The model's files are in {scheme}:// ({_shown(artifact_uri)}), which the light install "
        "of rllib-mlflow does not read (it reads local paths, mounts and s3://): "
        f"pip install mlflow {_MLFLOW_STORES.get(scheme, '')}".rstrip()
        + ", or serve the artifacts through the tracking server (mlflow server --serve-artifacts)."
    )


def local_source(artifact_uri: str, limits: Limits) -> LocalArtifacts | None:
    """The model's folder when `artifact_uri` is a local or mounted path; else None."""
    if urllib.parse.urlparse(artifact_uri).scheme in ("", "file"):
        return LocalArtifacts(artifact_uri, limits)
    return None


def _shown(artifact_uri: str) -> str:
    parsed = urllib.parse.urlparse(artifact_uri)
    return f"{parsed.scheme}://{parsed.hostname or ''}/..."
