"""Ray's own example RLModules (`ray/rllib/examples/rl_modules/classes/`) through the export.

TinyAtariCNN (a CNN squeezing two dims at once) and LSTMContainingRLModule (a stateful module
whose initial state is numpy) are trained briefly as Ray's example scripts configure them,
exported, and then RLlib's restored EnvRunner plays real episodes with explore=False: the
exported policy (`Policy` on each backend it has, and `load_policy` of the registered
version) must send the env the same actions. Modules that cannot be exported are refused
with one line naming the class, the step and what to do. docs/ray-example-modules.md has the
table for every example module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from rllib_mlflow.errors import UnsupportedModuleError
from rllib_mlflow.export import export_checkpoint
from rllib_mlflow.policy.serving import Policy
from tests import envs

pytestmark = pytest.mark.slow

EPISODE_STEPS = 40
RECORDED: list[list[tuple[Any, int, float]]] = []  # per episode: (raw obs, action, reward)


class RecordingEnv(gym.Wrapper):
    """Keeps what the env received from RLlib's EnvRunner: (observation, action, reward)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        RECORDED.append([])
        self._last = copy.deepcopy(obs)
        return obs, info

    def step(self, action):
        obs, reward, *rest = self.env.step(action)
        RECORDED[-1].append((self._last, int(action), float(reward)))
        self._last = copy.deepcopy(obs)
        return (obs, reward, *rest)


def _tiny_atari_cnn():
    """Ray's custom_cnn_rl_module.py config, on 16x16 images (three conv layers down to 1x1,
    as its 42x42 Atari frames)."""
    from ray.rllib.examples.rl_modules.classes.tiny_atari_cnn_rlm import TinyAtariCNN

    filters = [[4, 4, 2, "same"], [8, 4, 2, "same"], [16, 4, 1, "valid"]]
    return envs.make_env(envs.TINY_IMAGE), TinyAtariCNN, {"conv_filters": filters}


def _lstm_containing():
    """Ray's custom_lstm_rl_module.py config (StatelessCartPole), with tiny layers."""
    from ray.rllib.examples.envs.classes.stateless_cartpole import StatelessCartPole
    from ray.rllib.examples.rl_modules.classes.lstm_containing_rlm import (
        LSTMContainingRLModule,
    )

    config = {"lstm_cell_size": 16, "dense_layers": [16], "max_seq_len": 10}
    return StatelessCartPole(), LSTMContainingRLModule, config


MODULES = {"TinyAtariCNN": _tiny_atari_cnn, "LSTMContainingRLModule": _lstm_containing}
# What each exports: onnx2tf converts the CNN (the .h5 comes the same way, left out for
# time); it does not convert the ONNX LSTM operator torch writes, so the LSTM is ONNX only.
FORMATS = {"TinyAtariCNN": ["saved_model", "onnx"], "LSTMContainingRLModule": ["onnx"]}


@dataclass
class Trained:
    checkpoint: str
    export_dir: str
    policy_json: dict
    episodes: list[list[tuple[Any, int, float]]]

    @property
    def rllib_actions(self) -> np.ndarray:
        return np.array([action for episode in self.episodes for _, action, _ in episode])


def _config(name: str, env_name: str):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    _, module_class, model_config = MODULES[name]()
    spec = RLModuleSpec(module_class=module_class, model_config=model_config)
    return (
        PPOConfig()
        .environment(env_name)
        .framework("torch")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1)
        .rl_module(rl_module_spec=spec)
        .debugging(seed=0, log_level="ERROR")
        .reporting(min_time_s_per_iteration=0)
    )


def _train_export_and_play(name: str, root) -> Trained:
    """One training iteration, `algo.save()`, the ONNX export (parity checked), then RLlib's
    EnvRunner, restored from the checkpoint, plays episodes with explore=False."""
    from ray.tune.registry import register_env

    env_name = f"ray-example-{name}"
    register_env(env_name, lambda _: RecordingEnv(MODULES[name]()[0]))
    config = _config(name, env_name)
    algo = config.build_algo()
    try:
        algo.train()
        checkpoint = str(root / name / "checkpoint")
        algo.save(checkpoint)
    finally:
        algo.stop()
    (exported,) = export_checkpoint(
        checkpoint, root / name / "export", formats=FORMATS[name], parity_observations=200
    )
    algo = config.copy(copy_frozen=False).build_algo()
    try:
        algo.restore_from_path(checkpoint)
        RECORDED.clear()
        algo.env_runner.sample(num_timesteps=EPISODE_STEPS, explore=False, random_actions=False)
        episodes = [episode for episode in RECORDED if episode]
    finally:
        algo.stop()
    return Trained(checkpoint, str(exported.path), exported.metadata, episodes)


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    """Factory: module class name -> Trained (trained, exported and played once)."""
    root = tmp_path_factory.mktemp("ray_example_modules")
    cache: dict[str, Trained] = {}

    def get(name: str) -> Trained:
        if name not in cache:
            cache[name] = _train_export_and_play(name, root)
        return cache[name]

    return get


def _act(policy, trained: Trained) -> np.ndarray:
    """The policy's actions on RLlib's episodes, the state carried through each episode."""
    if not policy.is_stateful:
        return policy.compute_actions([obs for e in trained.episodes for obs, _, _ in e])
    actions = []
    for episode in trained.episodes:
        state = policy.initial_state(1)
        for obs, _, _ in episode:
            action, state = policy.step(obs, state)
            actions.append(int(action[0]))
    return np.array(actions)


@pytest.mark.parametrize("name", MODULES)
def test_exported_policy_acts_like_rllibs_env_runner(trained, name):
    t = trained(name)
    assert t.policy_json["formats"] == FORMATS[name] and t.policy_json["parity"]["passed"]
    assert sum(map(len, t.episodes)) >= EPISODE_STEPS
    for backend in ["onnxruntime", "tensorflow"][: len(FORMATS[name])]:
        policy = Policy(t.export_dir, backend=backend)
        np.testing.assert_array_equal(_act(policy, t), t.rllib_actions, err_msg=backend)


def test_the_lstm_modules_numpy_initial_state_is_the_graphs_state(trained):
    t = trained("LSTMContainingRLModule")
    names = [i["name"] for i in t.policy_json["inputs"]]
    assert names == ["observations", "state_in_h", "state_in_c"]
    assert [s["name"] for s in t.policy_json["state"]] == ["h", "c"]


def test_load_policy_of_the_registered_version_acts_like_rllib(trained, tmp_path):
    from rllib_mlflow import load_policy, log_checkpoint

    t = trained("LSTMContainingRLModule")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Parity was checked by the export above; this is about what load_policy serves.
    log_checkpoint(t.checkpoint, "ray-lstm", formats=["onnx"], verify=False, tracking_uri=uri)
    policy = load_policy("models:/ray-lstm/1", tracking_uri=uri)
    np.testing.assert_array_equal(_act(policy, t), t.rllib_actions)


# -- refused, in one line ------------------------------------------------------------------


SPACES = {
    "observation_space": gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
    "action_space": gym.spaces.Discrete(2),
}


def _saved_module(module_class, tmp_path, **model_config) -> str:
    """An RLModule checkpoint of `module_class` as RLlib writes it (`save_to_path`)."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    spec = RLModuleSpec(module_class=module_class, model_config=model_config, **SPACES)
    path = str(tmp_path / module_class.__name__)
    spec.build().save_to_path(path)
    return path


def _refusal(checkpoint: str, tmp_path) -> str:
    with pytest.raises(UnsupportedModuleError) as refused:
        export_checkpoint(checkpoint, tmp_path / "out", formats=["onnx"])
    message = str(refused.value)
    assert "\n" not in message and not (tmp_path / "out").exists()
    return message


def test_a_module_without_a_network_is_refused_in_one_line_naming_the_others(tmp_path):
    """A MultiRLModule of Ray's RandomRLModule (as custom_heuristic_policy.py's opponent)
    beside Ray's VPGTorchRLModule, as RLlib saves it."""
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.rl_modules.classes.random_rlm import RandomRLModule
    from ray.rllib.examples.rl_modules.classes.vpg_torch_rlm import VPGTorchRLModule

    learned = RLModuleSpec(module_class=VPGTorchRLModule, model_config={"hidden_dim": 8}, **SPACES)
    specs = {"random": RLModuleSpec(module_class=RandomRLModule, **SPACES), "learned": learned}
    checkpoint = str(tmp_path / "multi")
    MultiRLModuleSpec(rl_module_specs=specs).build().save_to_path(checkpoint)
    message = _refusal(checkpoint, tmp_path)
    assert message.startswith("RandomRLModule (module 'random', ")
    assert "reading the module failed (it is not a torch RLModule" in message
    assert message.endswith("others with --module-id (module_id=): learned.")
    (exported,) = export_checkpoint(
        checkpoint, tmp_path / "learned", formats=["onnx"], module_id="learned"
    )
    assert exported.metadata["parity"]["passed"]


def test_a_training_only_module_is_refused_in_one_line_at_the_tracer(tmp_path):
    from ray.rllib.examples.rl_modules.classes.intrinsic_curiosity_model_rlm import (
        IntrinsicCuriosityModel,
    )

    checkpoint = _saved_module(IntrinsicCuriosityModel, tmp_path, feature_dim=8)
    message = _refusal(checkpoint, tmp_path)
    assert message.startswith("IntrinsicCuriosityModel (module ")
    assert "tracing to ONNX failed (NotImplementedError: " in message
    assert "does not implement inference" in message
