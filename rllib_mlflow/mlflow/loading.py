"""Loading a registered policy, and the RLlib checkpoint a version came from.

This module imports neither Ray nor torch: `load_policy` runs on machines without them.
Against an HTTP(S) server it does not even import mlflow: the version is looked up over
REST and only the files the chosen backend needs are fetched, through the server's artifact
proxy or straight from the artifact store it names (a local or mounted path, s3://). On a
database or file store whose artifacts are local, only those files are copied too.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from rllib_mlflow import names
from rllib_mlflow.errors import RegistryError
from rllib_mlflow.extras import missing_extra
from rllib_mlflow.mlflow.artifact_limits import Limits
from rllib_mlflow.mlflow.artifact_sources import artifact_source, local_source
from rllib_mlflow.mlflow.client import client
from rllib_mlflow.mlflow.model_files import fetch_export
from rllib_mlflow.mlflow.rest import RestClient, rest_client
from rllib_mlflow.mlflow.transport import load_deadline_seconds
from rllib_mlflow.mlflow.transport import max_file_bytes as default_max_file_bytes
from rllib_mlflow.mlflow.versions import find_version, resolve_version
from rllib_mlflow.paths import check_tree, inside
from rllib_mlflow.policy.serving import Policy


def load_policy(
    model: str,
    *,
    training_iteration: int | None = None,
    trial: str | None = None,
    backend: str | None = None,
    tracking_uri: str | None = None,
    timeout_s: float | None = None,
    max_file_bytes: int | None = None,
) -> Policy:
    """Load a registered policy without Ray or torch.

    Args:
        model: ``models:/NAME/3``, ``models:/NAME@best``, ``models:/NAME@iter-20``, or a
            registered model name together with ``training_iteration``.
        training_iteration: pick the version registered for this iteration.
        trial: trial id or name, when several trials registered that iteration; ``""``
            for the version of no trial (registered by `log_checkpoint` outside Tune).
        backend: ``"onnxruntime"``, ``"tensorflow"``, ``"litert"`` (model.tflite, through
            ``ai-edge-litert``) or ``"litert_int8"`` (model_int8.tflite); default: ONNX
            Runtime if installed, else TensorFlow.
        timeout_s: the whole load from an HTTP server (and its artifact store) ends within
            this many seconds (default: MLFLOW_HTTP_REQUEST_TIMEOUT, else 120).
        max_file_bytes: refuse a larger file (default: RLLIB_MLFLOW_MAX_FILE_BYTES, 2 GiB).

    Returns:
        `rllib_mlflow.policy.serving.Policy`, with ``compute_actions(obs)``,
        ``action_dist_inputs(obs)`` and ``metadata``. The downloaded files are deleted
        once the policy is in memory.
    """
    limits = Limits(
        timeout_s or load_deadline_seconds(), max_file_bytes or default_max_file_bytes()
    )
    rest = rest_client(  # no `import mlflow` against an HTTP server
        tracking_uri, deadline_s=limits.deadline_s, max_file_bytes=limits.max_file_bytes
    )
    registry = rest or client(tracking_uri)
    version = resolve_version(registry, model, training_iteration=training_iteration, trial=trial)
    with tempfile.TemporaryDirectory(prefix="rllib_policy_") as local:
        export_dir = _fetch_directly(registry, version, backend, local, limits)
        policy = _read_policy(version, backend, tracking_uri, export_dir, local)
    policy.metadata = {
        **policy.metadata,
        "registered_model": version.name,
        "version": version.version,
    }
    return policy


def _read_policy(version, backend, tracking_uri, export_dir, local) -> Policy:
    """The policy in `export_dir`, else downloaded with MLflow into `local`; a malformed
    policy.json is the model's fault, said so."""
    try:
        if export_dir:
            return Policy(export_dir, backend=backend)
        from rllib_mlflow.mlflow.flavor import load_model

        uri = f"models:/{version.name}/{version.version}"
        return load_model(uri, dst_path=local, backend=backend, tracking_uri=tracking_uri)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
        raise RegistryError(
            f"Version {version.version} of {version.name!r} is not a loadable rllib-mlflow "
            f"policy: its files are malformed ({type(error).__name__}: {str(error)[:200]}). "
            "Re-register it from its checkpoint."
        ) from error


def _fetch_directly(registry, version, backend: str | None, local: str, limits: Limits):
    """The export directory of `version`, fetched into `local` through the server's artifact
    proxy or straight from its artifact store (over REST), or from a local store (MLflow's
    client on a database or file store); None when only MLflow reads that store."""
    if isinstance(registry, RestClient):
        artifact_uri = registry.download_uri(version.name, version.version)
        source = artifact_source(registry, artifact_uri, limits)
    else:
        artifact_uri = registry.get_model_version_download_uri(version.name, version.version)
        source = local_source(artifact_uri, limits)
    return source and fetch_export(source, version, backend, local)


def download_checkpoint(
    model: str, dst_path: str | None = None, *, tracking_uri: str | None = None
) -> str:
    """A local directory with the RLlib checkpoint a version came from.

    The result is accepted by ``Algorithm.from_checkpoint`` to resume training. The
    checkpoint is fetched from the run's artifacts when it was logged there
    (``log_rllib_checkpoint=True``), else from the recorded checkpoint URI.
    """
    version = find_version(model, tracking_uri=tracking_uri)
    dst = dst_path or tempfile.mkdtemp(prefix="rllib_checkpoint_")
    artifact = version.tags.get(names.VERSION_TAG_CHECKPOINT_ARTIFACT)
    if artifact:
        import mlflow.artifacts

        if not artifact.startswith("runs:/"):
            raise RegistryError(
                f"Version {version.version} of {version.name!r} names its checkpoint artifact "
                f"{artifact!r}, which is no runs:/ URI; refusing to download it."
            )
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=artifact, dst_path=dst, tracking_uri=tracking_uri
            )
        except ModuleNotFoundError as error:  # boto3 for an s3:// store, in the light install
            raise missing_extra(error, "download_checkpoint") from None
        check_tree(dst)
        return local
    source = version.tags.get(names.VERSION_TAG_CHECKPOINT_URI)
    if not source:
        raise RegistryError(f"Version {version.version} of {version.name!r} records no checkpoint.")
    if "://" not in source:
        if not os.path.isdir(source):
            raise RegistryError(
                f"The checkpoint of version {version.version} of {version.name!r} was at "
                f"{source}, which no longer exists. Log checkpoints with "
                "log_rllib_checkpoint=True to keep them in MLflow."
            )
        target = inside(dst, os.path.basename(source.rstrip("/")))
        shutil.copytree(source, target)
        return target
    from ray.tune import Checkpoint  # remote storage: pyarrow through Ray, as Tune wrote it

    local = Checkpoint(source).to_directory(dst)
    check_tree(dst)
    return local
