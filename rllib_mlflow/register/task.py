"""What to register, once: the settings a user chose, and the task of one checkpoint.

Data only: a `RegistrationTask` is the journal line, the message to the export worker and
the call; the Tune callback, `sync` and `log_checkpoint` build one, and
`rllib_mlflow.register.registration.register_task` carries it out. Its JSON never holds the
tracking URI (it may carry credentials): whoever runs the task supplies it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rllib_mlflow.export import FORMATS, validate_formats
from rllib_mlflow.export.agreement import DEFAULT_MIN_AGREEMENT
from rllib_mlflow.register.metrics import DEFAULT_BEST_METRIC
from rllib_mlflow.validation import validate_registered_model_name


@dataclass(frozen=True, kw_only=True)
class RegistrationSettings:
    """What to register and how, checked once, before any export work: the settings of
    `log_checkpoint`, `MLflowCheckpointCallback` and the CLI's `register` and `sync`, which
    all document them here.

    Attributes:
        registered_model_name: the registered model. A multi-module checkpoint registers
            each module as ``<name>-<module_id>``.
        best_metric, best_mode: the ``best`` alias moves to a version that improves on
            ``best_metric`` ("max" or "min"); a nested result key may be given by its last
            part.
        formats: export formats (see `rllib_mlflow.export_checkpoint`).
        log_rllib_checkpoint: also upload the RLlib checkpoint as run artifacts, so that
            `download_checkpoint` does not depend on the original storage.
        video: record one seeded episode from the env's rgb_array render (no Ray) as
            replay.gif with the LoggedModel, shown on the version's card.
        verify: prove each export equal to RLlib's own module (the parity check).
        retries: how often a transient failure (an unreachable server, HTTP 429 or 5xx) is
            retried, with backoff; a permanent one fails at once.
        keep_last, keep_best: the retention policy applied after each registration:
            versions outside the ``keep_last`` newest (the last registered) and the
            ``keep_best`` best are deleted
            (see `rllib_mlflow.mlflow.retention`); versions holding ``best`` or any alias a
            person set are never deleted. None: keep all.
        min_int8_agreement: with ``"tflite_int8"`` in formats, the share of observations it
            must act like RLlib on, else it is refused (see `export_checkpoint`).
    """

    registered_model_name: str
    best_metric: str = DEFAULT_BEST_METRIC
    best_mode: str = "max"
    formats: tuple[str, ...] = FORMATS
    log_rllib_checkpoint: bool = False
    video: bool = False
    verify: bool = True
    retries: int = 5
    keep_last: int | None = None
    keep_best: int | None = None
    min_int8_agreement: float = DEFAULT_MIN_AGREEMENT

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


@dataclass(frozen=True, kw_only=True)
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
    # The metrics are in the run at this step already (the Tune callback's logger put them
    # there). False by default, as in `log_checkpoint`: logging them again is harmless,
    # leaving them out of a run that lacks them is not.
    metrics_logged: bool = False
    module_id: str | None = None  # one module of a multi-module checkpoint, else all
    tags: dict[str, str] = field(default_factory=dict)  # extra version tags
    # A register_env name's creator (module:function), found in Tune's driver, whose
    # registry the export workers lack: how to make the env again (`rllib.env_record`).
    env_make: str | None = None

    @property
    def key(self) -> str:
        if self.training_iteration is None:
            raise ValueError("a task has a journal key once its training iteration is known")
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


def resolve_settings(
    settings: RegistrationSettings | None, registered_model_name: str | None, **keywords: Any
) -> RegistrationSettings:
    """The settings of a public call that takes them either way (`log_checkpoint`, the
    callback): `settings`, or the ones its keyword arguments give, never both at odds."""
    if settings is None:
        if registered_model_name is None:
            raise TypeError("pass registered_model_name, or settings=RegistrationSettings(...)")
        return RegistrationSettings(registered_model_name=registered_model_name, **keywords)
    name = settings.registered_model_name
    from_keywords = RegistrationSettings(registered_model_name=name, **keywords)
    if registered_model_name not in (None, name) or from_keywords != RegistrationSettings(
        registered_model_name=name
    ):
        raise TypeError(
            "pass the registration settings as settings=RegistrationSettings(...) or as "
            "keyword arguments, not both."
        )
    return settings
