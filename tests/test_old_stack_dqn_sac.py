"""RLlib's OLD API stack DQN and SAC (TF2 and torch): exported in every format, acting like RLlib.

Ray 2.60 does not build these Algorithms on the old stack (its replay buffer bug, worked
around in the training subprocess of `tests.old_stack`), so they are trained there a little,
and RLlib's own `Algorithm.compute_single_action(obs, explore=False)` is recorded on real
episodes. Each checkpoint is exported in a fresh process; the SavedModel, the ONNX graph and
the `.h5` then act on the recorded observations: discrete actions identical, continuous within
1e-5. DQN acts greedily on its Q-values (dueling: V + A - mean(A)); SAC with the tanh of its
policy network's mean, unsquashed to the Box's bounds, or the argmax of its logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# conftest imported RLlib, which put TensorFlow in graph mode: eager again before any use.
import rllib_mlflow._tensorflow_first  # noqa: F401, I001
from rllib_mlflow.policy.actions import deterministic_actions
from rllib_mlflow.policy.observations import ObservationConverter
from rllib_mlflow.policy.serving import Policy
from tests.old_stack import DQN_SAC, dqn_sac_checkpoints  # noqa: F401

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5
EXPECTED = {
    "dqn_tf2_cartpole": ("categorical", True),  # (action rule, dueling value head)
    "dqn_torch_cartpole": ("categorical", False),
    "sac_torch_pendulum": ("tanh_squashed_gaussian", False),
    "sac_tf2_cartpole": ("categorical", False),
}

_EXPORT_ALL = """
import json, sys
from rllib_mlflow.export import export_checkpoint
jobs, done = json.loads(sys.argv[1]), {}
for name, (checkpoint, out) in jobs.items():
    done[name] = {e.module_id: str(e.path) for e in export_checkpoint(checkpoint, out)}
print(json.dumps(done))
"""


@pytest.fixture(scope="session")
def dqn_sac_exports(dqn_sac_checkpoints, tmp_path_factory):  # noqa: F811
    """{name: export directory of its default_policy}, exported in a fresh process that sets
    nothing (the library arranges TF_USE_LEGACY_KERAS for the TF2 policies itself)."""
    root = tmp_path_factory.mktemp("dqn_sac_exports")
    jobs = {name: (dqn_sac_checkpoints[name].path, str(root / name)) for name in DQN_SAC}
    proc = subprocess.run(
        [sys.executable, "-c", _EXPORT_ALL, json.dumps(jobs)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"},
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    done = json.loads(proc.stdout.splitlines()[-1])
    return {name: exports["default_policy"] for name, exports in done.items()}


def _assert_same_actions(want: np.ndarray, got: np.ndarray, discrete: bool, where: str) -> None:
    got = np.asarray(got).reshape(want.shape)
    if discrete:
        mismatches = int(np.sum(want != got))
        assert mismatches == 0, f"{where}: {mismatches} of {len(want)} actions differ from RLlib"
    else:
        diff = np.abs(want.astype(np.float64) - got)
        limit = TOLERANCE * np.maximum(1.0, np.abs(want))
        assert np.all(diff <= limit), f"{where}: max |diff| {diff.max()} beyond {TOLERANCE}"


@pytest.mark.parametrize("name", sorted(DQN_SAC))
def test_every_format_acts_like_rllib_on_real_episodes(
    dqn_sac_checkpoints,  # noqa: F811
    dqn_sac_exports,
    name,
):
    import keras

    checkpoint = dqn_sac_checkpoints[name]
    assert checkpoint.training_iteration == 1  # trained, not only built
    export_dir = dqn_sac_exports[name]
    metadata = json.loads(Path(export_dir, "policy.json").read_text())
    assert metadata["formats"] == ["saved_model", "h5", "onnx"]
    assert metadata["parity"]["passed"] and "old-stack" in metadata["parity"]["reference"]
    assert metadata["algorithm"] == checkpoint.algo_name
    rule, _ = EXPECTED[name]
    assert metadata["action_rule"]["distribution"] == rule
    obs, want = checkpoint.truth("default_policy")
    assert len(want) >= 20  # real steps of real episodes
    discrete = rule == "categorical"
    if not discrete:  # SAC's actions reach Pendulum's bounds through tanh and unsquashing
        assert metadata["action_rule"]["normalize_actions"]
        assert np.all(np.abs(want) <= 2.0)
    for backend in ("onnxruntime", "tensorflow"):  # model.onnx, saved_model/
        got = Policy(export_dir, backend=backend).compute_actions(obs)
        _assert_same_actions(want, got, discrete, f"{name} {backend}")
    h5 = keras.models.load_model(Path(export_dir, "model.h5"), safe_mode=True)
    flat = ObservationConverter(metadata).feeds(obs)["observations"]
    got = deterministic_actions(np.asarray(h5([flat])), metadata["action_rule"])
    _assert_same_actions(want, got, discrete, f"{name} h5")


def test_snapshot_holds_the_q_network_and_the_policy_network(
    dqn_sac_checkpoints,  # noqa: F811
):
    """What the reader makes of each model, read in a process with legacy Keras: DQN's
    fcnet, advantage head and (dueling) value head; SAC's policy network alone."""
    script = """
import json, sys
from rllib_mlflow.rllib.reader import read_snapshots
out = {}
for name, path in json.loads(sys.argv[1]).items():
    (snap,) = read_snapshots(path)
    net = snap.network
    out[name] = {"rule": snap.action_rule.distribution, "dueling": net.value_head is not None,
                 "head_units": [int(l.config["units"]) for l in net.head if l.kind == "dense"],
                 "module_class": snap.module_class}
print(json.dumps(out))
"""
    paths = {name: dqn_sac_checkpoints[name].path for name in DQN_SAC}
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(paths)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    for name, (rule, dueling) in EXPECTED.items():
        assert (seen[name]["rule"], seen[name]["dueling"]) == (rule, dueling), name
    assert seen["dqn_torch_cartpole"]["head_units"] == [16, 2]  # hiddens=[16], then Q
    assert seen["sac_torch_pendulum"]["head_units"][-1] == 2  # mean and log std
    assert seen["sac_torch_pendulum"]["module_class"].endswith("SACTorchModel")


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"num_atoms": 51}, "Distributional DQN"),
        ({"noisy": True}, "Noisy DQN"),
        ({"exploration_config": {"type": "ParameterNoise"}}, "ParameterNoise"),
    ],
)
def test_dqn_options_the_exports_do_not_compute_are_refused(config, words):
    from rllib_mlflow.errors import UnsupportedModuleError
    from rllib_mlflow.rllib.old_models import _refuse_unsupported_q_learning

    with pytest.raises(UnsupportedModuleError, match=words):
        _refuse_unsupported_q_learning({"num_atoms": 1, **config})


def test_old_stack_squashed_gaussian_acts_with_the_tanh_of_its_mean():
    """RLlib's old-stack SquashedGaussian (SAC's) squashes its mean into [-1, 1], then
    normalize_actions unsquashes it; the new stack's acts with the pre-tanh mean."""
    mean = np.array([[0.5, 3.0]], np.float32)
    inputs = np.concatenate([mean, np.zeros_like(mean)], axis=1)
    rule = {
        "input_lens": [2, 2],
        "normalize_actions": True,
        "clip_actions": False,
        "low": [-2.0, 0.0],
        "high": [2.0, 10.0],
    }
    old = deterministic_actions(inputs, {**rule, "distribution": "tanh_squashed_gaussian"})
    squashed = np.tanh(mean)
    low, high = np.array(rule["low"]), np.array(rule["high"])
    np.testing.assert_allclose(old, low + (squashed + 1) * (high - low) / 2, rtol=1e-6)
    new = deterministic_actions(inputs, {**rule, "distribution": "squashed_gaussian"})
    np.testing.assert_allclose(new, np.clip(low + (mean + 1) * (high - low) / 2, low, high))
