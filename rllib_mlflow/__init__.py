"""rllib-mlflow: every RLlib checkpoint as a standard model, logged and registered in MLflow.

Public API. Everything but the errors is imported on first use, so that loading a policy
never imports Ray or torch; with the light install (`pip install rllib-mlflow`) the export
side says which extra to install.

Loading, in the light install:

    load_policy("models:/NAME@best") -> Policy
    find_version("models:/NAME@best") -> mlflow.entities.model_registry.ModelVersion
    download_checkpoint("models:/NAME/3") -> local RLlib checkpoint directory
    Policy   (compute_actions, step, initial_state, metadata)

Exporting and registering, with `[tune]`:

    export_checkpoint(checkpoint, output_dir, formats=FORMATS, ...) -> list[ExportedPolicy]
    ExportedPolicy   (module_id, path, formats, policy, parity, refused)
    FORMATS, ALL_FORMATS   (the default formats, and every format)
    log_checkpoint(checkpoint, registered_model_name, *, training_iteration=None, ...)
    MLflowLoggerCallback, MLflowCheckpointCallback   (Ray Tune callbacks)

Evaluating, with `[evaluate]` (no Ray):

    evaluate(name, *, env=None, env_config=None, episodes=10, versions=None, seed=0, ...)
        -> EvaluationReport   (VersionEvaluation per version)

Errors (each message says what to do next):

    RLlibMLflowError   (the base of all below)
    CheckpointError, UnsupportedModuleError, ParityError, RegistryError, TrackingError,
    UnsafePathError, EnvCreationError, MissingExtraError
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rllib_mlflow._version import __version__ as __version__
from rllib_mlflow.errors import (
    CheckpointError,
    EnvCreationError,
    ParityError,
    RegistryError,
    RLlibMLflowError,
    TrackingError,
    UnsafePathError,
    UnsupportedModuleError,
)
from rllib_mlflow.extras import MissingExtraError

if TYPE_CHECKING:  # what tools see; at run time `__getattr__` imports them on first use
    from rllib_mlflow.export import ALL_FORMATS, FORMATS, ExportedPolicy, export_checkpoint
    from rllib_mlflow.mlflow.loading import download_checkpoint, load_policy
    from rllib_mlflow.mlflow.versions import find_version
    from rllib_mlflow.play.evaluation import EvaluationReport, VersionEvaluation, evaluate
    from rllib_mlflow.policy.serving import Policy
    from rllib_mlflow.register.registration import log_checkpoint
    from rllib_mlflow.tune.callbacks import MLflowCheckpointCallback, MLflowLoggerCallback

_LAZY = {
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
    "evaluate": "rllib_mlflow.play.evaluation",
    "EvaluationReport": "rllib_mlflow.play.evaluation",
    "VersionEvaluation": "rllib_mlflow.play.evaluation",
}
# The extra to install when a name's module cannot be imported: the export side's, else this.
_EXTRA = {"evaluate": "evaluate", "EvaluationReport": "evaluate", "VersionEvaluation": "evaluate"}

__all__ = [
    "ALL_FORMATS",
    "FORMATS",
    "CheckpointError",
    "EnvCreationError",
    "EvaluationReport",
    "ExportedPolicy",
    "MLflowCheckpointCallback",
    "MLflowLoggerCallback",
    "MissingExtraError",
    "ParityError",
    "Policy",
    "RLlibMLflowError",
    "RegistryError",
    "TrackingError",
    "UnsafePathError",
    "UnsupportedModuleError",
    "VersionEvaluation",
    "download_checkpoint",
    "evaluate",
    "export_checkpoint",
    "find_version",
    "load_policy",
    "log_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from rllib_mlflow.extras import import_feature

        # Loading is in the light install: only the export side and evaluate can be missing.
        extra = _EXTRA.get(name, "tune")
        value = getattr(import_feature(_LAZY[name], f"rllib_mlflow.{name}", extra), name)
        globals()[name] = value  # imported once; tools that read __dict__ (pdoc) see it
        return value
    raise AttributeError(f"module 'rllib_mlflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
