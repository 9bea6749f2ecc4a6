"""One set of registration settings: built by keyword only, shared by `log_checkpoint` and
the Tune callback with the same defaults, and given one way or the other, never both."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from rllib_mlflow.register.registration import log_checkpoint
from rllib_mlflow.register.task import RegistrationSettings, RegistrationTask, resolve_settings
from rllib_mlflow.tune.callbacks import MLflowCheckpointCallback

DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(RegistrationSettings)
    if f.name != "registered_model_name"
}


def test_settings_and_tasks_are_built_by_keyword_only():
    with pytest.raises(TypeError):
        RegistrationSettings("model", "episode_return_mean")  # pyright: ignore[reportCallIssue]
    settings = RegistrationSettings(registered_model_name="model")
    with pytest.raises(TypeError):
        RegistrationTask(settings, "ckpt", "ckpt", 1)  # pyright: ignore[reportCallIssue]


@pytest.mark.parametrize("function", [log_checkpoint, MLflowCheckpointCallback.__init__])
def test_the_setting_keywords_default_as_the_settings_do(function):
    parameters = inspect.signature(function).parameters
    shared = {name: p.default for name, p in parameters.items() if name in DEFAULTS}
    assert shared == {name: DEFAULTS[name] for name in shared}
    assert "settings" in parameters


def test_metrics_logged_defaults_alike_on_the_task_and_in_log_checkpoint():
    task_default = next(
        f.default for f in dataclasses.fields(RegistrationTask) if f.name == "metrics_logged"
    )
    assert inspect.signature(log_checkpoint).parameters["metrics_logged"].default is task_default


def test_settings_are_given_as_an_object_or_as_keywords_not_both():
    settings = RegistrationSettings(registered_model_name="model", keep_last=3)
    assert resolve_settings(settings, None, video=False) is settings
    assert resolve_settings(settings, "model") is settings
    assert resolve_settings(None, "model", video=True).video
    with pytest.raises(TypeError, match="not both"):
        resolve_settings(settings, None, video=True)
    with pytest.raises(TypeError, match="not both"):
        resolve_settings(settings, "another")
    with pytest.raises(TypeError, match="registered_model_name"):
        resolve_settings(None, None)
    callback = MLflowCheckpointCallback(settings=settings)
    assert callback.settings is settings
