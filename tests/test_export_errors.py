"""Bad input gets a clear error of the library's own type, and nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.models.torch.torch_distributions import TorchCategorical
from torch import nn

from rllib_mlflow.errors import CheckpointError, ParityError, UnsupportedModuleError
from rllib_mlflow.export import export_checkpoint

MODULE_SUBDIR = Path("learner_group", "learner", "rl_module", "default_policy")


# -- not a checkpoint --------------------------------------------------------------------------


def test_empty_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not an RLlib checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_path_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is not a directory"):
        export_checkpoint(tmp_path / "no_such_checkpoint", tmp_path / "out")


def test_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "policy.pkl"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a directory"):
        export_checkpoint(path, tmp_path / "out")


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown export format.*'pt'"):
        export_checkpoint(tmp_path, tmp_path / "out", formats=["onnx", "pt"])


# -- truncated checkpoints ---------------------------------------------------------------------


@pytest.mark.slow
def test_checkpoint_without_module_state_is_truncated(trained_checkpoint, tmp_path):
    copy = Path(shutil.copytree(trained_checkpoint("ppo_cartpole").path, tmp_path / "ckpt"))
    (copy / MODULE_SUBDIR / "module_state.pkl").unlink()
    with pytest.raises(CheckpointError, match="module_state.pkl is missing.*truncated"):
        export_checkpoint(copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_checkpoint_with_cut_module_state_is_corrupted(trained_checkpoint, tmp_path):
    copy = Path(shutil.copytree(trained_checkpoint("ppo_cartpole").path, tmp_path / "ckpt"))
    state = copy / MODULE_SUBDIR / "module_state.pkl"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="module_state.pkl is corrupted or truncated"):
        export_checkpoint(copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_checkpoint_without_modules_is_incomplete(trained_checkpoint, tmp_path):
    copy = Path(shutil.copytree(trained_checkpoint("ppo_cartpole").path, tmp_path / "ckpt"))
    shutil.rmtree(copy / "learner_group" / "learner" / "rl_module")
    with pytest.raises(CheckpointError, match="incomplete"):
        export_checkpoint(copy, tmp_path / "out")


# -- module ids and unsupported modules --------------------------------------------------------


@pytest.mark.slow
def test_unknown_module_id_lists_the_existing_ones(trained_checkpoint, tmp_path):
    tc = trained_checkpoint("ppo_multiagent")
    with pytest.raises(CheckpointError) as info:
        export_checkpoint(tc.path, tmp_path / "out", module_id="p7")
    message = str(info.value)
    assert "'p7'" in message and "'p0'" in message and "'p1'" in message
    assert not (tmp_path / "out").exists()


class TinyCustomModule(TorchRLModule):
    """A user's own RLModule: one Linear layer and a Categorical distribution."""

    def setup(self):
        self.net = nn.Linear(self.observation_space.shape[0], self.action_space.n)

    def _forward(self, batch, **kwargs):
        return {Columns.ACTION_DIST_INPUTS: self.net(batch[Columns.OBS])}

    def get_inference_action_dist_cls(self):
        return TorchCategorical

    def get_exploration_action_dist_cls(self):
        return TorchCategorical

    def get_train_action_dist_cls(self):
        return TorchCategorical


@pytest.fixture
def custom_module_checkpoint(tmp_path) -> Path:
    module = TinyCustomModule(
        observation_space=gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
        action_space=gym.spaces.Discrete(3),
        model_config={},
    )
    path = tmp_path / "custom_module"
    module.save_to_path(str(path))
    return path


def test_custom_module_exports_every_format_through_onnx2tf(custom_module_checkpoint, tmp_path):
    (policy,) = export_checkpoint(custom_module_checkpoint, tmp_path / "out")
    assert policy.formats == ("saved_model", "h5", "onnx") and policy.refused == {}
    assert policy.metadata["module_class"].endswith("TinyCustomModule")
    assert policy.metadata["how"]["saved_model"] == "converted from model.onnx by onnx2tf"
    assert policy.parity["passed"] and policy.parity["observations"] >= 1000
    assert set(policy.parity["formats"]) == {"saved_model", "h5", "onnx"}


def test_formats_the_converter_cannot_make_are_recorded_not_fatal(
    custom_module_checkpoint, tmp_path, monkeypatch
):
    """Without onnx2tf a custom module still gets ONNX, and policy.json says why not more."""
    from rllib_mlflow.export import convert

    monkeypatch.setattr(convert, "converter_missing", lambda: "onnx2tf is not installed here")
    (policy,) = export_checkpoint(custom_module_checkpoint, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "policy.json"]
    assert policy.formats == ("onnx",)
    assert set(policy.refused) == {"saved_model", "h5"}
    assert all("onnx2tf is not installed here" in why for why in policy.refused.values())
    written = json.loads((tmp_path / "out" / "policy.json").read_text())
    assert written["refused_formats"] == policy.refused and written["formats"] == ["onnx"]

    with pytest.raises(UnsupportedModuleError) as info:  # nothing left to write
        export_checkpoint(custom_module_checkpoint, tmp_path / "tf", formats=["saved_model"])
    assert "TinyCustomModule" in str(info.value) and "onnx" in str(info.value)
    assert not (tmp_path / "tf").exists()


# -- parity failure ----------------------------------------------------------------------------


@pytest.fixture
def broken_keras(monkeypatch):
    """A broken Keras builder (one weight off): the SavedModel and .h5 do not act like RLlib."""
    from rllib_mlflow.export import keras as keras_export

    build = keras_export.build_keras_model

    def broken_build(snapshot):
        model = build(snapshot)
        dense = next(layer for layer in model.layers if layer.__class__.__name__ == "Dense")
        kernel, bias = dense.get_weights()
        kernel[0, 0] += 0.5
        dense.set_weights([kernel, bias])
        return model

    monkeypatch.setattr(keras_export, "build_keras_model", broken_build)


@pytest.mark.slow
def test_a_format_failing_parity_is_refused_alone(trained_checkpoint, tmp_path, broken_keras):
    tc = trained_checkpoint("ppo_cartpole")
    (exported,) = export_checkpoint(tc.path, tmp_path / "out")
    assert exported.formats == ("onnx",)
    assert sorted(p.name for p in exported.path.iterdir()) == ["model.onnx", "policy.json"]
    for fmt in ("saved_model", "h5"):
        assert exported.refused[fmt].startswith("does not act like RLlib on the parity check's")
    assert set(exported.parity["formats"]) == {"onnx"} and exported.parity["passed"]
    assert set(exported.parity["failed"]) == {"saved_model", "h5"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging leftovers


@pytest.mark.slow
def test_parity_failure_of_every_format_writes_nothing(trained_checkpoint, tmp_path, broken_keras):
    tc = trained_checkpoint("ppo_cartpole")
    out = tmp_path / "out"
    with pytest.raises(ParityError) as info:
        export_checkpoint(tc.path, out, formats=["saved_model", "h5"])
    message = str(info.value)
    assert "does not match RLlib" in message and "Nothing was written" in message
    assert "'h5'" in message and "'saved_model'" in message and "'onnx'" not in message
    assert list(tmp_path.iterdir()) == []  # no output dir, no staging leftovers

    # An existing output keeps what it had.
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(ParityError):
        export_checkpoint(tc.path, out, formats=["saved_model", "h5"], overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
