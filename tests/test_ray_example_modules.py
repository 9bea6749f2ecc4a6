"""Ray's own example RLModules (`ray/rllib/examples/rl_modules/classes/`) and the action
distributions Ray ships, through the export.

TinyAtariCNN (a CNN squeezing two dims at once), LSTMContainingRLModule (a stateful module
whose initial state is numpy) and a PPO module acting through Ray's TorchDeterministic
(tests/custom_modules.py) are trained briefly as Ray's example scripts configure them,
exported, registered, and then RLlib's restored EnvRunner plays real episodes with
explore=False: the exported policy (`Policy` on each backend it has, `load_policy` of the
registered version and the real `mlflow models serve` of it) must send the env the same
actions. Modules that cannot be exported are refused with one line naming the class, the
step and what to do. docs/ray-example-modules.md has the table for every example module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from rllib_mlflow.errors import CheckpointError, UnsupportedModuleError
from rllib_mlflow.export import export_checkpoint
from rllib_mlflow.policy.serving import Policy
from tests import envs
from tests.mlflow_server import post_json, start_model_server

pytestmark = pytest.mark.slow

EPISODE_STEPS = 40
RELATIVE = 1e-5  # continuous actions: float32 rounding, relative to max(1, |action|)


def _tiny_atari_cnn():
    """Ray's custom_cnn_rl_module.py config, on 16x16 images (three conv layers down to 1x1,
    as its 42x42 Atari frames)."""
    from ray.rllib.examples.rl_modules.classes.tiny_atari_cnn_rlm import TinyAtariCNN

    filters = [[4, 4, 2, "same"], [8, 4, 2, "same"], [16, 4, 1, "valid"]]
    return lambda: envs.make_env(envs.TINY_IMAGE), TinyAtariCNN, {"conv_filters": filters}


def _lstm_containing():
    """Ray's custom_lstm_rl_module.py config (StatelessCartPole), with tiny layers."""
    from ray.rllib.examples.envs.classes.stateless_cartpole import StatelessCartPole
    from ray.rllib.examples.rl_modules.classes.lstm_containing_rlm import (
        LSTMContainingRLModule,
    )

    config = {"lstm_cell_size": 16, "dense_layers": [16], "max_seq_len": 10}
    return StatelessCartPole, LSTMContainingRLModule, config


def _deterministic():
    """PPO's default module acting through (a from_logits-giving subclass of) Ray's
    TorchDeterministic, on Pendulum's Box actions (unsquashed to [-2, 2] by RLlib)."""
    from tests.custom_modules import DeterministicPPOTorchRLModule

    config = {"fcnet_hiddens": [16], "head_fcnet_hiddens": []}
    return lambda: gym.make("Pendulum-v1"), DeterministicPPOTorchRLModule, config


MODULES = {
    "TinyAtariCNN": _tiny_atari_cnn,
    "LSTMContainingRLModule": _lstm_containing,
    "DeterministicPPOTorchRLModule": _deterministic,
}
# What each exports: onnx2tf converts the CNN and the traced distribution (the .h5 comes the
# same way, left out for time); it does not convert the ONNX LSTM operator torch writes, so
# the LSTM is ONNX only.
FORMATS = {
    "TinyAtariCNN": ["saved_model", "onnx"],
    "LSTMContainingRLModule": ["onnx"],
    "DeterministicPPOTorchRLModule": ["saved_model", "onnx"],
}
BACKENDS = {"saved_model": "tensorflow", "onnx": "onnxruntime"}
CASES = [(name, BACKENDS[fmt]) for name in MODULES for fmt in FORMATS[name]]


@dataclass
class Trained:
    checkpoint: str
    export_dir: str
    policy_json: dict
    episodes: list[list[envs.Step]]

    @property
    def rllib_actions(self) -> np.ndarray:
        return np.stack([action for episode in self.episodes for _, action, _ in episode])

    @property
    def observations(self) -> list:
        return [obs for episode in self.episodes for obs, _, _ in episode]


def assert_rllib_actions(actions, t: Trained, what: str) -> None:
    """Discrete actions identical, Box actions within float32 rounding."""
    want = t.rllib_actions
    got = np.asarray(actions).reshape(want.shape)
    if np.issubdtype(want.dtype, np.integer):
        mismatches = int(np.sum(got != want))
        assert mismatches == 0, f"{what}: {mismatches} of {len(want)} actions differ from RLlib"
        return
    worst = float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))))
    assert worst <= RELATIVE, f"{what}: relative difference {worst} from RLlib"


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
    """One training iteration, `algo.save()`, the export (parity checked), then RLlib's
    EnvRunner, restored from the checkpoint, plays episodes with explore=False."""
    from ray.tune.registry import register_env

    make_env = MODULES[name]()[0]
    env_name = f"ray-example-{name}"
    register_env(env_name, lambda _: make_env())
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
    episodes = envs.rllib_episodes(config, checkpoint, make_env, EPISODE_STEPS)
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
        return policy.compute_actions(trained.observations)
    actions = []
    for episode in trained.episodes:
        state = policy.initial_state(1)
        for obs, _, _ in episode:
            action, state = policy.step(obs, state)
            actions.append(action[0])
    return np.stack(actions)


@pytest.mark.parametrize("name", MODULES)
def test_exported_policy_acts_like_rllibs_env_runner(trained, name):
    t = trained(name)
    assert t.policy_json["formats"] == FORMATS[name] and t.policy_json["parity"]["passed"]
    assert sum(map(len, t.episodes)) >= EPISODE_STEPS
    for fmt in FORMATS[name]:
        policy = Policy(t.export_dir, backend=BACKENDS[fmt])
        assert_rllib_actions(_act(policy, t), t, fmt)


def test_the_lstm_modules_numpy_initial_state_is_the_graphs_state(trained):
    t = trained("LSTMContainingRLModule")
    names = [i["name"] for i in t.policy_json["inputs"]]
    assert names == ["observations", "state_in_h", "state_in_c"]
    assert [s["name"] for s in t.policy_json["state"]] == ["h", "c"]


def test_torch_deterministic_acts_with_its_inputs_traced(trained):
    t = trained("DeterministicPPOTorchRLModule")
    assert t.policy_json["action_rule"]["distribution"] == "deterministic"
    assert t.policy_json["action_rule"]["input_lens"] == [1]  # no log std
    assert t.policy_json["custom_distribution"].endswith("custom_modules.DeterministicMean")
    assert "distribution's deterministic sample" in t.policy_json["how"]["onnx"]
    actions = t.rllib_actions
    assert np.all(np.abs(actions) <= 2.0) and len(np.unique(actions)) > 1


# -- registered: load_policy and mlflow models serve -----------------------------------------


@pytest.fixture(scope="module")
def registered(trained, tmp_path_factory) -> str:
    """Each module registered as version 1 of `ray-<name>` in one SQLite store."""
    from rllib_mlflow import log_checkpoint

    uri = f"sqlite:///{tmp_path_factory.mktemp('ray_example_registry') / 'mlflow.db'}"
    for name in MODULES:  # parity was checked by the export above
        path, formats = trained(name).checkpoint, FORMATS[name]
        log_checkpoint(path, f"ray-{name}", formats=formats, verify=False, tracking_uri=uri)
    return uri


@pytest.mark.parametrize("name, backend", CASES)
def test_load_policy_of_the_registered_version_acts_like_rllib(trained, registered, name, backend):
    from rllib_mlflow import load_policy

    policy = load_policy(f"models:/ray-{name}/1", backend=backend, tracking_uri=registered)
    assert policy.backend == backend
    assert_rllib_actions(_act(policy, trained(name)), trained(name), f"load_policy {backend}")


@pytest.mark.parametrize("name", MODULES)
def test_served_model_acts_like_rllib(trained, registered, name, tmp_path):
    t = trained(name)
    server = start_model_server(f"models:/ray-{name}/1", registered, tmp_path / "serve.log")
    try:
        url = f"{server.uri}/invocations"
        stateful = bool(t.policy_json["state"])
        actions = _served_stateful(url, t) if stateful else _served_stateless(url, t)
    finally:
        server.stop()
    assert_rllib_actions(actions, t, "served")


def _served_stateless(url: str, t: Trained) -> np.ndarray:
    """The episodes' raw observations in one request; then the first as a request alone."""
    observations = np.asarray(t.observations)
    actions = np.asarray(_predictions(url, {"inputs": observations.tolist()}))
    first = _predictions(url, {"inputs": observations[:1].tolist()})  # as an env loop sends
    np.testing.assert_allclose(first, actions[:1], rtol=RELATIVE, atol=RELATIVE)
    return actions


def _served_stateful(url: str, t: Trained) -> np.ndarray:
    """As docs/guides/loading-and-serving.md says: one request per step, the policy.json's
    initial state (`state_<name>`) on an episode's first step, then the last response's."""
    initial = {f"state_{s['name']}": [s["initial"]] for s in t.policy_json["state"]}
    actions = []
    for episode in t.episodes:
        state = initial
        for obs, _, _ in episode:
            inputs = {"observations": [np.asarray(obs).tolist()], **state}
            predictions = _predictions(url, {"inputs": inputs})
            actions.append(predictions["actions"][0])
            state = {name: predictions[name] for name in initial}
    return np.asarray(actions)


def _predictions(url: str, payload) -> Any:
    """The response's predictions: a list of actions, or a dict of named tensors."""
    status, body = post_json(url, payload)
    assert status == 200, body
    return body["predictions"]


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


def test_the_stateful_random_module_is_refused_in_one_line(tmp_path):
    """StatefulRandomRLModule (random_rlm.py) keeps a numpy state beside its random actions:
    refused as RandomRLModule, before its state is looked at."""
    from ray.rllib.examples.rl_modules.classes.random_rlm import StatefulRandomRLModule

    message = _refusal(_saved_module(StatefulRandomRLModule, tmp_path), tmp_path)
    assert message.startswith("StatefulRandomRLModule (module ")
    assert "reading the module failed (it is not a torch RLModule" in message


def test_torch_deterministic_as_shipped_is_refused_saying_what_to_add(tmp_path):
    """Ray 2.60's TorchDeterministic has no from_logits: RLlib itself cannot act with it."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from tests.custom_modules import BareDeterministicPPOTorchRLModule

    box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    spec = RLModuleSpec(
        module_class=BareDeterministicPPOTorchRLModule,
        model_config={"fcnet_hiddens": [8]},
        observation_space=SPACES["observation_space"],
        action_space=box,
    )
    checkpoint = str(tmp_path / "bare")
    spec.build().save_to_path(checkpoint)
    message = _refusal(checkpoint, tmp_path)
    assert message.startswith("BareDeterministicPPOTorchRLModule (module ")
    assert "reading its action distribution failed. Its inference distribution " in message
    assert "TorchDeterministic has no from_logits" in message
    assert message.endswith("returns cls(loc=logits)) and train again.")


def test_mobilenet_without_torchvision_is_refused_in_one_line(ray_session, tmp_path):
    """MobileNetTorchPPORLModule (mobilenet_rlm.py) needs torchvision, not installed here.
    Its checkpoint is written with a stand-in of the class under the real name (importing
    mobilenet_rlm.py runs Ray's example: it builds and trains a PPO at import, which fails
    without torchvision); the export then imports the real file, and refuses in one line."""
    import importlib.util
    import sys
    import types

    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import (
        DefaultPPOTorchRLModule,
    )

    if importlib.util.find_spec("torchvision") is not None:  # it would train and download
        pytest.skip("torchvision is installed: mobilenet_rlm.py would train at import")

    name = "ray.rllib.examples.rl_modules.classes.mobilenet_rlm"
    stand_in = types.ModuleType(name)
    cls = type("MobileNetTorchPPORLModule", (DefaultPPOTorchRLModule,), {"__module__": name})
    stand_in.MobileNetTorchPPORLModule = cls  # pyright: ignore[reportAttributeAccessIssue]
    sys.modules[name] = stand_in
    try:
        checkpoint = _saved_module(cls, tmp_path, fcnet_hiddens=[8])
    finally:
        del sys.modules[name]
    with pytest.raises(CheckpointError) as refused:
        export_checkpoint(checkpoint, tmp_path / "out", formats=["onnx"])
    message = str(refused.value)
    assert "\n" not in message and not (tmp_path / "out").exists()
    assert f"needs the RLModule class {name}.MobileNetTorchPPORLModule" in message
    assert "No module named 'torchvision'" in message
    assert "pip install torchvision" in message
