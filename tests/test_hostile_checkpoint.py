"""Reading a checkpoint never runs what its pickles ask for (rllib/pickles.py): a payload is
refused by name before it runs, whatever file of the checkpoint carries it; classes that are
gone and functions pickled by value are stood in for, never built."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rllib_mlflow.errors import CheckpointError, UnsafeCheckpointError
from rllib_mlflow.rllib import pickles


class _Payload:
    """Unpickling this runs `touch <marker>`: what a hostile checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload(_Payload):
    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


def _hostile(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data))
    return path


@pytest.mark.parametrize("payload", [_Payload, _EvalPayload])
def test_a_payload_is_refused_by_name_and_never_runs(tmp_path, payload):
    marker = tmp_path / "marker"
    path = _hostile(tmp_path / "policy_state.pkl", {"weights": {}, "x": payload(marker)})
    with pytest.raises(UnsafeCheckpointError) as error:
        pickles.load(path)
    assert not marker.exists()
    name = "posix.system" if payload is _Payload else "builtins.eval"
    assert name in str(error.value) and str(path) in str(error.value)


def test_classes_that_are_gone_and_functions_by_value_are_stood_in_for(tmp_path):
    import cloudpickle

    marker = tmp_path / "marker"

    def callback():  # pickled by value: cloudpickle writes its code
        marker.touch()

    data = {
        "weights": [np.arange(6, dtype=np.float32).reshape(2, 3)],
        "callback": callback,
        "spaces": {"space": "discrete", "n": 2},
    }
    path = tmp_path / "state.pkl"
    path.write_bytes(cloudpickle.dumps(data))
    loaded = pickles.load(path)
    np.testing.assert_array_equal(loaded["weights"][0], data["weights"][0])
    assert loaded["weights"][0].dtype == np.float32
    assert pickles.is_stand_in(loaded["callback"])
    assert loaded["spaces"] == data["spaces"]
    assert not marker.exists()  # the function was never built, let alone called


class _Hyperparameters:
    def __init__(self, lr: float):
        self.lr = lr


def test_a_missing_class_keeps_its_name_and_state(tmp_path):
    raw = pickle.dumps(_Hyperparameters(0.1), protocol=2)  # names classes as "module\nname"
    here = f"{__name__}\n_Hyperparameters".encode()
    gone = raw.replace(here, b"ray.rllib.core.rl_trainer\nRLTrainerHPs")  # gone since Ray 2.5
    assert gone != raw
    path = tmp_path / "algorithm_state.pkl"
    path.write_bytes(gone)
    hps = pickles.load(path)
    assert pickles.stand_in_name(hps) == "ray.rllib.core.rl_trainer.RLTrainerHPs"
    assert type(hps).__name__ == "RLTrainerHPs" and hps.lr == 0.1


def test_a_truncated_pickle_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "policy_state.pkl"
    path.write_bytes(pickle.dumps({"weights": np.zeros(100)})[:-40])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        pickles.load(path)


def test_classes_outside_ray_are_imported_only_when_trusted(tmp_path, monkeypatch):
    stand_in = pickles._stand_in("tests_not_imported_anywhere.envs.Corridor")
    monkeypatch.delenv("RLLIB_MLFLOW_TRUSTED_MODULES", raising=False)
    with pytest.raises(CheckpointError, match="RLLIB_MLFLOW_TRUSTED_MODULES=tests_not_imp"):
        pickles.real_class(stand_in, what="RLModule class", path=tmp_path)
    monkeypatch.setenv("RLLIB_MLFLOW_TRUSTED_MODULES", "json")
    assert pickles.real_class(pickles._stand_in("json.JSONDecoder"), what="c", path=tmp_path) is (
        json.JSONDecoder
    )


def _hostile_checkpoints(root: Path, marker: Path) -> dict[str, Path]:
    """Checkpoint directories of both stacks, each with the payload in one of its pickles."""
    payload = _Payload(marker)
    policy = root / "policy"
    _hostile(policy / "policy_state.pkl", {"policy_spec": {"config": payload}, "weights": {}})
    (policy / "rllib_checkpoint.json").write_text(json.dumps({"type": "Policy"}))
    algo = root / "algo"
    _hostile(algo / "algorithm_state.pkl", {"config": {"env": "CartPole-v1"}, "w": payload})
    _hostile(algo / "policies/default_policy/policy_state.pkl", {"weights": {}})
    (algo / "rllib_checkpoint.json").write_text(json.dumps({"policy_ids": ["default_policy"]}))
    module = root / "module"
    _hostile(module / "class_and_ctor_args.pkl", {"class": payload, "ctor_args_and_kwargs": []})
    _hostile(module / "module_state.pkl", {})
    return {"policy": policy, "algo": algo, "module": module}


def test_export_of_a_hostile_checkpoint_names_the_call_and_runs_nothing(tmp_path):
    """Through the command a user runs on a checkpoint from a shared bucket."""
    marker = tmp_path / "marker"
    for kind, checkpoint in _hostile_checkpoints(tmp_path / "checkpoints", marker).items():
        result = subprocess.run(
            [sys.executable, "-m", "rllib_mlflow.cli", "export", str(checkpoint), "-o",
             str(tmp_path / f"out-{kind}")],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode != 0, kind
        assert "posix.system" in result.stderr and "refused" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert not marker.exists(), kind


ARCHIVE = Path(__file__).parent / "archive"


def test_a_payload_where_ray_itself_would_run_it_is_never_read(tmp_path):
    """RLlib's own `Policy.from_checkpoint` cloudpickle.loads the StateBufferConnector's
    bytes inside policy_state.pkl; rllib-mlflow rebuilds the policy without them, so a real
    checkpoint (Ray 2.30's, which Ray 2.60 unpickles as it is) carrying a payload there
    exports, and the payload never runs."""
    marker = tmp_path / "marker"
    source = ARCHIVE / "ray-2.30.0/appo_torch_cartpole/checkpoint"
    checkpoint = shutil.copytree(source, tmp_path / "checkpoint")
    state_file = checkpoint / "policies/default_policy/policy_state.pkl"
    state = pickle.loads(state_file.read_bytes())
    name, connectors = state["connector_configs"]["agent"]
    assert "StateBufferConnector" in dict(connectors)
    poisoned = [(c, pickle.dumps(_Payload(marker)) if c == "StateBufferConnector" else p)
                for c, p in connectors]  # fmt: skip
    state["connector_configs"]["agent"] = (name, poisoned)
    state_file.write_bytes(pickle.dumps(state))
    result = subprocess.run(
        [sys.executable, "-m", "rllib_mlflow.cli", "export", str(checkpoint), "-o",
         str(tmp_path / "out"), "--formats", "onnx"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists()
    assert json.loads((tmp_path / "out/policy.json").read_text())["parity"]["passed"]
    # What the test guards against: RLlib's own restore runs the payload.
    restore = (
        "import sys; from ray.rllib.policy.policy import Policy; "
        "Policy.from_checkpoint(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", restore, str(state_file.parent)], timeout=600)
    assert marker.exists()


def test_a_class_outside_rllib_is_never_built_with_the_pickles_arguments(tmp_path):
    """`logging` is imported in every process, and FileHandler(path, "w") empties a file:
    named as a module's class, it is refused, not constructed."""
    import logging

    from rllib_mlflow.rllib.modules import restore_module

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    module = tmp_path / "module"
    ctor = ((str(target), "w"), {})
    _hostile(
        module / "class_and_ctor_args.pkl",
        {"class": logging.FileHandler, "ctor_args_and_kwargs": ctor},
    )
    _hostile(module / "module_state.pkl", {})
    with pytest.raises(UnsafeCheckpointError, match="logging.FileHandler"):
        restore_module(module)
    assert target.read_text() == "keep me"
