"""The logged model's environment: our default requirements skip MLflow's check of them
against this environment (a CPU-second per export worker), and come out as MLflow makes them."""

from __future__ import annotations

import pytest

from rllib_mlflow.mlflow.flavor import get_default_pip_requirements, model_environment
from rllib_mlflow.mlflow.internals import _process_pip_requirements


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorflow"])
def test_the_default_environment_is_mlflows(backend):
    conda_env, requirements, _ = _process_pip_requirements(
        get_default_pip_requirements(backend), None, None
    )
    assert model_environment(backend) == (conda_env, requirements)
    assert requirements[0].startswith("mlflow==")


def test_requirements_a_user_gives_go_through_mlflow():
    _, requirements = model_environment("onnxruntime", extra_pip_requirements=["gymnasium"])
    assert requirements[-1] == "gymnasium"
    _, requirements = model_environment("onnxruntime", pip_requirements=["numpy"])
    assert requirements[0].startswith("mlflow==") and "numpy" in requirements  # MLflow adds it


def test_locked_requirements_go_through_mlflow(monkeypatch):
    """MLFLOW_LOCK_MODEL_DEPENDENCIES asks MLflow to lock them (with uv): not our fast path."""
    calls = []
    import rllib_mlflow.mlflow.flavor as flavor

    def recording(*args):
        calls.append(args)
        return _process_pip_requirements(*args)

    monkeypatch.setattr(flavor, "_process_pip_requirements", recording)
    model_environment("onnxruntime")
    assert not calls
    monkeypatch.setenv("MLFLOW_LOCK_MODEL_DEPENDENCIES", "true")
    model_environment("onnxruntime")
    assert len(calls) == 1
