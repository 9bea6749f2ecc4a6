"""rllib-mlflow: every RLlib checkpoint as a standard model, logged and registered in MLflow.

Public API (imported lazily, so that loading a policy never imports Ray or torch; with the
light install, `pip install rllib-mlflow`, the export side says which extra to install):

    export_checkpoint(checkpoint, output_dir, formats=..., module_id=None, verify=True)
    log_checkpoint(checkpoint, registered_model_name, *, training_iteration=None, ...)
    load_policy("models:/NAME@best") -> Policy
    download_checkpoint("models:/NAME/3") -> local RLlib checkpoint directory
    MLflowLoggerCallback, MLflowCheckpointCallback   (Ray Tune callbacks)
"""

from __future__ import annotations

from typing import Any

from rllib_mlflow._version import __version__ as __version__

_EXPORTS = {
    "export_checkpoint": "rllib_mlflow.export",
    "ExportedPolicy": "rllib_mlflow.export",
    "FORMATS": "rllib_mlflow.export",
    "ALL_FORMATS": "rllib_mlflow.export",
    "log_checkpoint": "rllib_mlflow.register.registration",
    "load_policy": "rllib_mlflow.mlflow.loading",
    "find_version": "rllib_mlflow.mlflow.versions",
    "download_checkpoint": "rllib_mlflow.mlflow.loading",
    "Policy": "rllib_mlflow.policy.serving",
    "MLflowLoggerCallback": "rllib_mlflow.tune.callbacks",
    "MLflowCheckpointCallback": "rllib_mlflow.tune.callbacks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from rllib_mlflow.extras import import_feature

        # Only the export side can be missing: loading is in the light install.
        return getattr(import_feature(_EXPORTS[name], f"rllib_mlflow.{name}", "tune"), name)
    raise AttributeError(f"module 'rllib_mlflow' has no attribute {name!r}")
