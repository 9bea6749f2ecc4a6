"""RLlib's OLD API stack (TF2 and torch policies): exported in every format, acting like RLlib.

The checkpoints are trained once per session in a subprocess (`tests.old_stack`), which also
records what `Algorithm.compute_single_action(obs, explore=False)` did on real episodes. The
exports are made in another fresh process that sets nothing: the library itself must arrange
TF_USE_LEGACY_KERAS for RLlib's TF2 policies. Each export is then loaded here, from its files
(ONNX Runtime, the SavedModel, the `.h5`) and through `rllib_mlflow.policy.Policy` on both
backends, and fed the recorded observations: discrete actions identical, continuous within
1e-5.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# conftest imported RLlib, which put TensorFlow in graph mode: eager again before any use.
import rllib_mlflow._tensorflow_first  # noqa: F401, I001
from rllib_mlflow.errors import CheckpointError, UnsupportedModuleError
from rllib_mlflow.export import export_checkpoint
from rllib_mlflow.policy.actions import deterministic_actions
from rllib_mlflow.policy.observations import ObservationConverter
from rllib_mlflow.policy.serving import Policy
from rllib_mlflow.rllib.layout import list_module_ids, read_training_iteration
from tests.mlflow_server import post_json, start_model_server
from tests.old_stack import (  # noqa: F401
    CONFIGS,
    DQN_SAC,
    POLICY_CHECKPOINT_OF,
    old_stack_checkpoints,
)

pytestmark = pytest.mark.slow

# DQN and SAC: tests/test_old_stack_dqn_sac.py.
TRAINED = [name for name, config in CONFIGS.items() if config[4] > 0 and name not in DQN_SAC]
EXPORTED = sorted(TRAINED + list(POLICY_CHECKPOINT_OF))
CLI_EXPORTED = "ppo_tf2_cartpole"  # through `rllib-mlflow export`, the others by the API
TOLERANCE = 1e-5
CLI = str(Path(sys.executable).with_name("rllib-mlflow"))

_EXPORT_ALL = """
import json, sys
from rllib_mlflow.export import export_checkpoint
jobs, done = json.loads(sys.argv[1]), {}
for name, (checkpoint, out) in jobs.items():
    done[name] = [
        {"module_id": e.module_id, "path": str(e.path), "formats": list(e.formats)}
        for e in export_checkpoint(checkpoint, out)
    ]
print(json.dumps(done))
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}


@pytest.fixture(scope="session")
def old_stack_exports(old_stack_checkpoints, tmp_path_factory):  # noqa: F811
    """{name: {policy_id: export directory}}, exported in fresh processes."""
    root = tmp_path_factory.mktemp("old_stack_exports")
    jobs = {
        name: (old_stack_checkpoints[name].path, str(root / name))
        for name in EXPORTED
        if name != CLI_EXPORTED
    }
    proc = subprocess.run(
        [sys.executable, "-c", _EXPORT_ALL, json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    exports = {
        name: {e["module_id"]: e["path"] for e in records}
        for name, records in json.loads(proc.stdout.splitlines()[-1]).items()
    }
    cli = subprocess.run(
        [CLI, "export", old_stack_checkpoints[CLI_EXPORTED].path, "-o", str(root / CLI_EXPORTED)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=600,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr[-5000:]
    exports[CLI_EXPORTED] = {"default_policy": str(root / CLI_EXPORTED)}
    return exports


def _truth(checkpoints, name: str, policy_id: str) -> tuple[np.ndarray, np.ndarray]:
    return checkpoints[POLICY_CHECKPOINT_OF.get(name, name)].truth(policy_id)


def _assert_same_actions(want: np.ndarray, got: np.ndarray, discrete: bool, where: str) -> None:
    got = np.asarray(got).reshape(want.shape)
    if discrete:
        mismatches = int(np.sum(want != got))
        assert mismatches == 0, f"{where}: {mismatches} of {len(want)} actions differ from RLlib"
    else:
        diff = np.abs(want.astype(np.float64) - got)
        limit = TOLERANCE * np.maximum(1.0, np.abs(want))
        assert np.all(diff <= limit), f"{where}: max |diff| {diff.max()} beyond {TOLERANCE}"


@pytest.mark.parametrize("name", EXPORTED)
def test_every_format_acts_like_rllib_on_real_episodes(
    old_stack_checkpoints,  # noqa: F811
    old_stack_exports,
    name,
):
    import keras

    checkpoint = old_stack_checkpoints[name]
    exports = old_stack_exports[name]
    assert sorted(exports) == sorted(checkpoint.policy_ids)
    for policy_id, export_dir in exports.items():
        metadata = json.loads(Path(export_dir, "policy.json").read_text())
        assert metadata["formats"] == ["saved_model", "h5", "onnx"]
        assert metadata["parity"]["passed"] and "old-stack" in metadata["parity"]["reference"]
        obs, want = _truth(old_stack_checkpoints, name, policy_id)
        assert len(want) >= 20  # real steps of real episodes
        discrete = metadata["action_rule"]["distribution"] == "categorical"
        h5 = keras.models.load_model(Path(export_dir, "model.h5"), safe_mode=True)
        if metadata["stateful"]:
            episodes = old_stack_checkpoints[name].episodes(policy_id)
            _assert_steps_like_rllib(export_dir, h5, obs, want, episodes, f"{name}/{policy_id}")
            continue
        for backend in ("onnxruntime", "tensorflow"):  # model.onnx, saved_model/
            got = Policy(export_dir, backend=backend).compute_actions(obs)
            _assert_same_actions(want, got, discrete, f"{name}/{policy_id} {backend}")
        flat = ObservationConverter(metadata).feeds(obs)["observations"]  # the h5's input
        dist_inputs = np.asarray(h5([flat]))
        got = deterministic_actions(dist_inputs, metadata["action_rule"])
        _assert_same_actions(want, got, discrete, f"{name}/{policy_id} h5")


def _assert_steps_like_rllib(export_dir, h5, obs, want, episodes, where: str) -> None:
    """A stateful export stepped through RLlib's episodes (state from `initial_state` at
    each start, told the reward each action earned) chooses RLlib's actions: through
    `Policy.step` on both backends, and through the `.h5` (behind the same `step`)."""
    starts, rewards = episodes
    assert starts.sum() >= 2  # several real episodes, each from the initial state
    policies = {b: Policy(export_dir, backend=b) for b in ("onnxruntime", "tensorflow")}
    policies["h5"] = Policy(export_dir, backend="tensorflow")
    policies["h5"]._run = _h5_runner(h5, policies["h5"].metadata)
    for label, policy in policies.items():
        got, reward = [], 0.0
        for observation, start, earned in zip(obs, starts, rewards):
            if start:
                state, reward = policy.initial_state(1), 0.0
            action, state = policy.step(observation[None], state, prev_rewards=[reward])
            got.append(action[0])
            reward = earned
        _assert_same_actions(want, np.asarray(got), True, f"{where} {label}")


def _h5_runner(h5, metadata):
    """The `.h5` network as a backend: named graph inputs -> actions and next state."""
    names = [tensor["name"] for tensor in metadata["inputs"]]
    state_outputs = [f"state_out_{s['name']}" for s in metadata["state"]]

    def run(feeds):
        dist_inputs, *state = (np.asarray(t) for t in h5([feeds[n] for n in names]))
        actions = deterministic_actions(dist_inputs, metadata["action_rule"])
        return {"actions": actions, "action_dist_inputs": dist_inputs} | dict(
            zip(state_outputs, state)
        )

    return run


def test_lstm_reading_prev_action_and_reward_served_by_mlflow_acts_like_rllib(
    old_stack_checkpoints,  # noqa: F811
    old_stack_exports,
    tmp_path,
):
    """`mlflow models serve` of the TF2 LSTM that reads the previous action and reward,
    stepped through RLlib's episodes: each episode starts from the initial state policy.json
    gives (the previous action one-hot at action 0, not zeros), then the response's state."""
    from rllib_mlflow.mlflow.flavor import save_model

    name = "ppo_tf2_lstm_prev"
    export_dir = old_stack_exports[name]["default_policy"]
    save_model(export_dir, tmp_path / "model")
    obs, want = _truth(old_stack_checkpoints, name, "default_policy")
    starts, rewards = old_stack_checkpoints[name].episodes("default_policy")
    initial = {f"state_{k}": v.tolist() for k, v in Policy(export_dir).initial_state(1).items()}
    assert initial["state_prev_n_actions"] == [[1.0, 0.0, 0.0]]
    server = start_model_server(
        str(tmp_path / "model"), f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "serve.log"
    )
    got = []
    try:
        for observation, start, earned in zip(obs, starts, rewards):
            if start:
                state, reward = initial, 0.0
            inputs = {"observations": [observation.tolist()], "prev_rewards": [reward], **state}
            status, body = post_json(f"{server.uri}/invocations", {"inputs": inputs})
            assert status == 200, body
            got.append(body["predictions"]["actions"][0])
            state = {k: v for k, v in body["predictions"].items() if k != "actions"}
            reward = float(earned)
    finally:
        server.stop()
    _assert_same_actions(want, np.asarray(got), True, f"{name} served")


def test_policy_json_says_what_the_old_stack_does(old_stack_exports):
    pendulum = json.loads(
        Path(old_stack_exports["ppo_tf2_pendulum"]["default_policy"], "policy.json").read_text()
    )
    (step,) = pendulum["preprocessing"]
    assert step["type"] == "mean_std_filter" and step["frozen_at_checkpoint"]
    assert pendulum["filter"]["frozen_at_checkpoint"]
    rule = pendulum["action_rule"]
    assert rule["distribution"] == "diag_gaussian" and rule["normalize_actions"]
    assert pendulum["model_config"]["free_log_std"] is True
    clip = json.loads(
        Path(
            old_stack_exports["ppo_torch_widebox_clip"]["default_policy"], "policy.json"
        ).read_text()
    )
    assert clip["action_rule"]["clip_actions"] and not clip["action_rule"]["normalize_actions"]
    dict_obs = json.loads(
        Path(old_stack_exports["ppo_torch_dict_obs"]["default_policy"], "policy.json").read_text()
    )
    assert dict_obs["observation_space"]["type"] == "Dict"
    assert [step["type"] for step in dict_obs["preprocessing"]] == ["flatten"]
    assert dict_obs["input"]["shape"] == [None, 5]  # Discrete(3) one-hot + Box(2)
    for name, width in (("ppo_tf2_discrete_obs", 25), ("ppo_torch_multidiscrete_obs", 10)):
        one_hot = json.loads(
            Path(old_stack_exports[name]["default_policy"], "policy.json").read_text()
        )
        assert [step["type"] for step in one_hot["preprocessing"]] == ["flatten"]
        assert one_hot["input"]["shape"] == [None, width]  # one-hot (per part)
    prev = json.loads(
        Path(old_stack_exports["ppo_tf2_lstm_prev"]["default_policy"], "policy.json").read_text()
    )
    assert [w["name"] for w in prev["history"]] == ["prev_n_actions", "prev_n_rewards"]
    assert prev["history"][0]["initial"] == [1.0, 0.0, 0.0]  # RLlib pads with action 0
    assert prev["preprocessing"][-1]["joins"] == "lstm"
    reward_only = json.loads(
        Path(
            old_stack_exports["ppo_torch_lstm_prev_reward"]["default_policy"], "policy.json"
        ).read_text()
    )
    assert [w["name"] for w in reward_only["history"]] == ["prev_n_rewards"]
    cartpole = json.loads(
        Path(old_stack_exports["ppo_tf2_cartpole"]["default_policy"], "policy.json").read_text()
    )
    assert cartpole["algorithm"] == "PPO" and cartpole["training_iteration"] == 1
    assert cartpole["module_class"] == "ray.rllib.models.tf.fcnet.FullyConnectedNetwork"


def test_layout_lists_policies_and_iteration(old_stack_checkpoints):  # noqa: F811
    multi = old_stack_checkpoints["ppo_tf2_multiagent"]
    assert list_module_ids(multi.path) == ["p0", "p1"]
    assert read_training_iteration(multi.path) == 1
    assert list_module_ids(old_stack_checkpoints["ppo_torch_cartpole_policy"].path) == [
        "default_policy"
    ]


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("ppo_torch_lstm_prev_box_action", r"lstm_use_prev_action=True and Box\("),
        ("ppo_torch_attention", "attention net"),
    ],
)
def test_models_that_cannot_be_reproduced_are_refused(
    old_stack_checkpoints,  # noqa: F811
    tmp_path,
    name,
    words,
):
    with pytest.raises(UnsupportedModuleError, match=words):
        export_checkpoint(old_stack_checkpoints[name].path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tf2_policy_in_a_keras3_process_says_what_to_set(old_stack_checkpoints, tmp_path):  # noqa: F811
    import tensorflow as tf

    # The test process imported TensorFlow with Keras 3 (conftest imports RLlib).
    assert not tf.keras.__name__.startswith("tf_keras")
    with pytest.raises(UnsupportedModuleError, match="set TF_USE_LEGACY_KERAS=1"):
        export_checkpoint(old_stack_checkpoints["ppo_tf2_cartpole"].path, tmp_path / "out")


def test_truncated_old_stack_checkpoint_says_what_is_missing(old_stack_checkpoints, tmp_path):  # noqa: F811
    copy = tmp_path / "checkpoint"
    shutil.copytree(old_stack_checkpoints["ppo_torch_cartpole"].path, copy)
    (copy / "policies" / "default_policy" / "policy_state.pkl").unlink()
    with pytest.raises(CheckpointError) as error:
        export_checkpoint(copy, tmp_path / "out")
    message = str(error.value)
    assert "old-API-stack" in message and "policies/default_policy/policy_state.pkl" in message
    assert "learner_group" not in message


def test_ray1_pickled_checkpoint_is_refused_with_what_to_do(tmp_path):
    old = tmp_path / "checkpoint_000010"
    old.mkdir()
    (old / "checkpoint-10").write_bytes(b"\x80\x04N.")
    (old / "checkpoint-10.tune_metadata").write_bytes(b"\x80\x04N.")
    for path in (old, old / "checkpoint-10"):
        with pytest.raises(
            CheckpointError, match=r"Ray 1\.x and 2\.0.*Ray 2\.3 to 2\.9.*algo\.save\(\)"
        ):
            export_checkpoint(path, tmp_path / "out")
        with pytest.raises(CheckpointError, match="checkpoint-N"):
            list_module_ids(str(path))
