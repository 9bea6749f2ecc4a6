"""Which files of a registered version `load_policy` fetches, from any artifact source: the
MLmodel, then the rllib_mlflow flavor's `policy.json`, then what the chosen backend needs
(`model.onnx`, a `.tflite` file, or the SavedModel folder): nothing else is downloaded.
"""

from __future__ import annotations

import json
from typing import Any

from rllib_mlflow.errors import RegistryError
from rllib_mlflow.mlflow.artifact_sources import ArtifactSource
from rllib_mlflow.paths import inside
from rllib_mlflow.policy.serving import (
    BACKEND_FILES,
    BACKEND_FORMATS,
    ONNX_FILE,
    POLICY_FILE,
    SAVED_MODEL_DIR,
    onnxruntime_installed,
)


def fetch_export(source: ArtifactSource, version, backend: str | None, local: str) -> str:
    """The export directory of `version`, fetched from `source` into `local` with only the
    files `backend` needs. Every path the MLmodel names stays inside `local`."""
    data = _flavor_data(source, version, local)
    export_dir = inside(local, data)
    policy = _policy_json(source.fetch(f"{data}/{POLICY_FILE}", local), version)
    formats = policy.get("formats") or []
    _require_format(version, backend, formats)
    use_onnx = backend == "onnxruntime" or (
        backend is None and "onnx" in formats and onnxruntime_installed()
    )
    if backend in ("litert", "litert_int8"):
        source.fetch(f"{data}/{BACKEND_FILES[backend]}", local)
    elif use_onnx:
        source.fetch(f"{data}/{ONNX_FILE}", local)
    else:
        source.fetch_tree(f"{data}/{SAVED_MODEL_DIR}", local)
    return export_dir


def _require_format(version, backend: str | None, formats: list) -> None:
    """Refuse a backend whose file the version was not exported with, before fetching it."""
    wanted = BACKEND_FORMATS.get(backend) if backend else None
    if wanted is None or not formats or wanted in formats:
        return
    usable = [b for b, f in BACKEND_FORMATS.items() if f in formats]
    raise RegistryError(
        f"Version {version.version} of {version.name!r} has no {wanted} export (its formats: "
        f"{', '.join(formats) or 'none'}): load it with backend= one of {usable}, or re-export "
        f"its checkpoint with {wanted!r} among the formats."
    )


def _flavor_data(source: ArtifactSource, version, local: str) -> str:
    """The rllib_mlflow flavor's data folder, as the version's MLmodel names it."""
    import yaml

    with open(source.fetch("MLmodel", local)) as stream:
        flavors = _mapping(yaml.safe_load(stream)).get("flavors")
    conf = _mapping(flavors).get("rllib_mlflow")
    if not isinstance(conf, dict) or not isinstance(conf.get("data"), str):
        raise RegistryError(
            f"Version {version.version} of {version.name!r} is not an rllib-mlflow model "
            "(its MLmodel has no rllib_mlflow flavor with a data folder)."
        )
    return conf["data"]


def _policy_json(path: str, version) -> dict[str, Any]:
    with open(path) as stream:
        try:
            policy = json.load(stream)
        except ValueError:
            policy = None
    if not isinstance(policy, dict):
        raise RegistryError(
            f"Version {version.version} of {version.name!r} has a malformed policy.json (not "
            "a JSON object). Re-register it from its checkpoint."
        )
    return policy


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}
