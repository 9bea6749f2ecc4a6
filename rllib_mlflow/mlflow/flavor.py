"""The `rllib_mlflow` MLflow flavor: an exported RLlib policy as an MLflow model.

Same four verbs as MLflow's own flavors. A saved model holds the exports under `data/`
(saved_model/, model.h5, model.onnx, policy.json) and the pyfunc loader under
`code/rllib_mlflow_policy/`, a copy of the package `rllib_mlflow.policy`, so that serving
needs only mlflow, numpy and one inference backend: never Ray, torch or rllib-mlflow.
Models logged before that ship `code/rllib_mlflow_serving.py` instead and keep loading
with it. Signatures and input examples need pandas, which `mlflow-skinny` leaves out: they
are imported where a model is saved, so that the light install imports this module.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
from mlflow import pyfunc
from mlflow.models import Model
from mlflow.models.model import MLMODEL_FILE_NAME, ModelInfo
from mlflow.utils.file_utils import write_to

from rllib_mlflow.mlflow.internals import (
    _CONDA_ENV_FILE_NAME,
    _PYTHON_ENV_FILE_NAME,
    _REQUIREMENTS_FILE_NAME,
    _get_pinned_requirement,
    _mlflow_conda_env,
    _process_pip_requirements,
    _PythonEnv,
)
from rllib_mlflow.mlflow.signature import input_example, policy_signature
from rllib_mlflow.paths import inside
from rllib_mlflow.policy import serving

FLAVOR_NAME = "rllib_mlflow"
DATA_DIR = "data"
CODE_DIR = "code"
CODE_PACKAGE = "rllib_mlflow_policy"  # `rllib_mlflow.policy`, as a served model imports it
LOADER_MODULE = f"{CODE_PACKAGE}.pyfunc"


def get_default_pip_requirements(backend: str = "onnxruntime") -> list[str]:
    """mlflow, numpy and one inference backend, pinned to the installed versions."""
    package = {"onnxruntime": "onnxruntime", "tensorflow": "tensorflow"}[backend]
    return [_get_pinned_requirement(p) for p in ("mlflow", "numpy", package)]


def save_model(
    export_dir: str | os.PathLike,
    path: str | os.PathLike,
    mlflow_model: Model | None = None,
    *,
    backend: str | None = None,
    pip_requirements: list[str] | None = None,
    extra_pip_requirements: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    """Save one exported policy directory (from `export_checkpoint`) as an MLflow model."""
    from mlflow.models.utils import _save_example

    export_dir, path = Path(export_dir), Path(path).resolve()
    policy = json.loads((export_dir / serving.POLICY_FILE).read_text())
    backend = backend or ("onnxruntime" if "onnx" in policy["formats"] else "tensorflow")
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} already exists and is not empty.")
    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(export_dir, path / DATA_DIR)
    shutil.copytree(
        Path(serving.__file__).parent,
        path / CODE_DIR / CODE_PACKAGE,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )

    mlflow_model = mlflow_model or Model()
    mlflow_model.signature = policy_signature(policy)
    if metadata is not None:
        mlflow_model.metadata = metadata
    _save_example(mlflow_model, input_example(policy), str(path))
    pyfunc.add_to_model(
        mlflow_model,
        loader_module=LOADER_MODULE,
        data=DATA_DIR,
        code=CODE_DIR,
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
    )
    mlflow_model.add_flavor(
        FLAVOR_NAME,
        data=DATA_DIR,
        code=CODE_DIR,
        backend=backend,
        formats=policy["formats"],
        module_id=policy["module_id"],
        training_iteration=policy["training_iteration"],
        algorithm=policy["algorithm"],
        env_id=policy["env_id"],
    )
    mlflow_model.save(str(path / MLMODEL_FILE_NAME))
    _write_environment(path, backend, pip_requirements, extra_pip_requirements)


def log_model(
    export_dir: str | os.PathLike,
    name: str,
    *,
    step: int = 0,
    run_id: str | None = None,
    registered_model_name: str | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    **kwargs: Any,
) -> ModelInfo:
    """Log an exported policy as a LoggedModel of a run at `step` (and optionally register)."""
    import rllib_mlflow.mlflow.flavor as flavor_module

    if run_id is not None and kwargs.get("model_id") is None:
        # Model.log would file the LoggedModel under the active experiment (by default the
        # Default one), not the run's: create it in the run's experiment ourselves.
        client = mlflow.MlflowClient()
        run = client.get_run(run_id)
        kwargs["model_id"] = client.create_logged_model(
            experiment_id=run.info.experiment_id,
            name=name,
            source_run_id=run_id,
            tags={k: str(v) for k, v in (tags or {}).items()},
            params={**run.data.params, **{k: str(v) for k, v in (params or {}).items()}},
        ).model_id
    return Model.log(
        artifact_path=None,
        name=name,
        flavor=flavor_module,
        export_dir=export_dir,
        step=step,
        run_id=run_id,
        registered_model_name=registered_model_name,
        params=params,
        tags=tags,
        **kwargs,
    )


def load_model(
    model_uri: str,
    dst_path: str | None = None,
    backend: str | None = None,
    tracking_uri: str | None = None,
) -> serving.Policy:
    """Load a logged policy as `rllib_mlflow.policy.serving.Policy` (no Ray, no torch)."""
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=_resolve_models_uri(model_uri, tracking_uri),
        dst_path=dst_path,
        tracking_uri=tracking_uri,
        registry_uri=tracking_uri,
    )
    conf = Model.load(os.path.join(local, MLMODEL_FILE_NAME)).flavors.get(FLAVOR_NAME)
    if conf is None:
        raise ValueError(f"{model_uri} is not an rllib-mlflow model (no {FLAVOR_NAME} flavor).")
    return serving.Policy(inside(local, conf["data"]), backend=backend)


def _resolve_models_uri(model_uri: str, tracking_uri: str | None) -> str:
    """The storage URI behind models:/NAME/V, models:/NAME@alias or models:/<model_id>.

    MLflow resolves registry URIs against the global registry URI whatever `registry_uri`
    download_artifacts is given, so resolve them against `tracking_uri` here."""
    if tracking_uri is None or not model_uri.startswith("models:/"):
        return model_uri
    import posixpath

    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    base, sub_path = ModelsArtifactRepository.split_models_uri(model_uri)
    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    found = get_model_name_and_version(client, base)
    if len(found) == 1:  # a LoggedModel id
        root = client.get_logged_model(found[0]).artifact_location
    else:  # (name, version), which MLflow leaves untyped
        name, version = found
        root = client.get_model_version_download_uri(str(name), str(version))
    return posixpath.join(root, sub_path) if sub_path else root


def _load_pyfunc(path: str):
    from rllib_mlflow.policy.pyfunc import _load_pyfunc

    return _load_pyfunc(path)


def _write_environment(
    path: Path,
    backend: str,
    pip_requirements: list[str] | None,
    extra_pip_requirements: list[str] | None,
) -> None:
    import yaml

    conda_env, requirements = model_environment(backend, pip_requirements, extra_pip_requirements)
    with open(path / _CONDA_ENV_FILE_NAME, "w") as stream:
        yaml.safe_dump(conda_env, stream=stream, default_flow_style=False)
    write_to(str(path / _REQUIREMENTS_FILE_NAME), "\n".join(requirements))
    _PythonEnv.current().to_yaml(str(path / _PYTHON_ENV_FILE_NAME))


def model_environment(
    backend: str,
    pip_requirements: list[str] | None = None,
    extra_pip_requirements: list[str] | None = None,
) -> tuple[dict[str, Any] | None, list[str]]:
    """The model's conda environment and pip requirements, as MLflow's flavors make them."""
    if pip_requirements is not None or extra_pip_requirements is not None or _locking():
        default = None if pip_requirements else get_default_pip_requirements(backend)
        conda_env, requirements, _ = _process_pip_requirements(
            default, pip_requirements, extra_pip_requirements
        )
        return conda_env, requirements
    # Our defaults are pinned to what is installed, so MLflow's check of them against this
    # environment cannot fail; it scans every installed distribution's files, a CPU-second
    # in each export worker, taken from training.
    requirements = get_default_pip_requirements(backend)
    return _mlflow_conda_env(additional_pip_deps=requirements, install_mlflow=False), requirements


def _locking() -> bool:
    """MLFLOW_LOCK_MODEL_DEPENDENCIES: MLflow locks the requirements with uv."""
    from mlflow.environment_variables import MLFLOW_LOCK_MODEL_DEPENDENCIES

    return bool(MLFLOW_LOCK_MODEL_DEPENDENCIES.get())
