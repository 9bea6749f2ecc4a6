"""What to register, once: the settings a user chose, and the task of one checkpoint.

A `RegistrationTask` is the journal line, the message to the export worker and the call:
the Tune callback and `sync` build one, `register_task` carries it out. Its JSON never
holds the tracking URI (it may carry credentials): whoever runs the task supplies it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rllib_mlflow.export import FORMATS, validate_formats
from rllib_mlflow.export.agreement import DEFAULT_MIN_AGREEMENT
from rllib_mlflow.register.metrics import DEFAULT_BEST_METRIC
from rllib_mlflow.retries import with_retries
from rllib_mlflow.validation import validate_registered_model_name


@dataclass(frozen=True)
class RegistrationSettings:
    """What to register and how: checked once, before any export work."""

    registered_model_name: str
    best_metric: str = DEFAULT_BEST_METRIC
    best_mode: str = "max"
    formats: tuple[str, ...] = FORMATS
    log_rllib_checkpoint: bool = False
    video: bool = False  # record a replay of one seeded episode with each version
    verify: bool = True  # prove each export equal to RLlib's own module
    retries: int = 5  # for transient failures
    keep_last: int | None = None  # retention, applied after each registration
    keep_best: int | None = None
    min_int8_agreement: float = DEFAULT_MIN_AGREEMENT  # tflite_int8's, see export_checkpoint

    def __post_init__(self) -> None:
        validate_registered_model_name(self.registered_model_name)
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', not {self.best_mode!r}.")
        object.__setattr__(self, "formats", validate_formats(self.formats))
        if not 0.0 <= self.min_int8_agreement <= 1.0:
            raise ValueError(
                f"min_int8_agreement is a share of observations, from 0 to 1, not "
                f"{self.min_int8_agreement!r}."
            )


@dataclass(frozen=True)
class RegistrationTask:
    """One checkpoint to export, log and register, with the settings to do it with."""

    settings: RegistrationSettings
    checkpoint: str  # where to read it now: a staged copy, or the checkpoint itself
    checkpoint_uri: str  # where it lives, recorded on the version
    training_iteration: int | None  # None: read it from the checkpoint
    metrics: dict[str, float] = field(default_factory=dict)
    trial_id: str | None = None
    trial_name: str | None = None
    run_id: str | None = None  # resolved by whoever runs the task, when not known yet
    metrics_logged: bool = True  # the metrics are in the run at this step already
    module_id: str | None = None  # one module of a multi-module checkpoint, else all
    tags: dict[str, str] = field(default_factory=dict)  # extra version tags

    @property
    def key(self) -> str:
        return task_key(self.trial_id, self.training_iteration)

    def replace(self, **changes: Any) -> RegistrationTask:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """Flat, as the journal has always held it."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        settings = dataclasses.asdict(fields.pop("settings"))
        return {**fields, **settings, "formats": list(self.settings.formats)}

    @classmethod
    def from_json(cls, entry: dict[str, Any], **overrides: Any) -> RegistrationTask:
        """A task from a journal line or message (other keys ignored, missing ones default);
        `overrides` replace fields of either the task or its settings."""
        values = {**entry, **overrides}
        settings = {k: values[k] for k in _SETTINGS_FIELDS if values.get(k) is not None}
        task = {k: values[k] for k in _TASK_FIELDS if values.get(k) is not None}
        return cls(settings=RegistrationSettings(**settings), **task)


_SETTINGS_FIELDS = [f.name for f in dataclasses.fields(RegistrationSettings)]
_TASK_FIELDS = [f.name for f in dataclasses.fields(RegistrationTask) if f.name != "settings"]


def task_key(trial_id: str | None, training_iteration: int) -> str:
    """The journal's key of a checkpoint: one per trial and training iteration."""
    return f"{trial_id or 'no-trial'}/{int(training_iteration)}"


def register_task(
    task: RegistrationTask, tracking_uri: str | None = None, registry_uri: str | None = None
) -> list[dict[str, str]]:
    """Carry out one task, retrying transient failures, then apply the retention policy;
    returns the versions as `{"name", "version"}`."""
    from rllib_mlflow.register.registration import register

    versions = with_retries(
        lambda: register(task, tracking_uri=tracking_uri, registry_uri=registry_uri),
        attempts=task.settings.retries + 1,
    )
    settings = task.settings
    if settings.keep_last is not None or settings.keep_best is not None:
        _apply_retention(settings, {v.name for v in versions}, tracking_uri, registry_uri)
    return [{"name": v.name, "version": str(v.version)} for v in versions]


def _apply_retention(settings, names: set[str], tracking_uri, registry_uri) -> None:
    from rllib_mlflow.mlflow.client import client
    from rllib_mlflow.mlflow.retention import prune

    mlflow_client = client(tracking_uri, registry_uri)
    for name in sorted(names):
        prune(mlflow_client, name, settings.keep_last, settings.keep_best)
