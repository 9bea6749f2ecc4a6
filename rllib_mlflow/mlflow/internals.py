"""Every private MLflow name rllib-mlflow uses, in one module.

MLflow may change these in any release (they start with `_`), so an upgrade that breaks
one breaks it here. Import this module only where `mlflow` is imported anyway: it loads
`mlflow.models` and `mlflow.utils`, which the fast REST paths never need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.tracking.fluent import _get_experiment_id
from mlflow.utils.environment import (
    _CONDA_ENV_FILE_NAME,
    _PYTHON_ENV_FILE_NAME,
    _REQUIREMENTS_FILE_NAME,
    _mlflow_conda_env,
    _process_pip_requirements,
    _PythonEnv,
)
from mlflow.utils.requirements_utils import _get_pinned_requirement

if TYPE_CHECKING:
    from mlflow import MlflowClient


def _registry_client(mlflow_client: MlflowClient):
    """The registry half of an MlflowClient. Its writes go straight to the store, where
    MlflowClient's own first ask `get_registered_model` whether the model is a prompt: on
    MLflow's SQL store that loads every version of the model, O(versions) per write."""
    return mlflow_client._get_registry_client()


def _save_example(*args, **kwargs):
    """MLflow's `_save_example`, imported when called: it needs pandas, which the light
    install (`mlflow-skinny`) leaves out, and only saving a model calls it."""
    from mlflow.models.utils import _save_example as save_example

    return save_example(*args, **kwargs)


__all__ = [
    "_CONDA_ENV_FILE_NAME",
    "_PYTHON_ENV_FILE_NAME",
    "_REQUIREMENTS_FILE_NAME",
    "_PythonEnv",
    "_get_experiment_id",
    "_get_pinned_requirement",
    "_mlflow_conda_env",
    "_process_pip_requirements",
    "_registry_client",
    "_save_example",
    "_use_tracking_uri",
]
