"""Shared fixtures: one Ray session and a cache of small, really trained RLlib checkpoints.

Every configuration trains tiny networks for one or two iterations with num_env_runners=0
(the environment runs in the driver), so a checkpoint costs a few seconds. A checkpoint is
trained the first time a test asks for it and reused for the rest of the session.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every subprocess (the CLI, Tune jobs, the export worker) runs this checkout's code, wherever
# the venv's editable install points.
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token auth for a local test cluster

from tests import envs  # noqa: E402  (registers the test environments)

SMALL_NET = [16, 16]


@dataclass(frozen=True)
class TrainedCheckpoint:
    """A checkpoint written by `Algorithm.save()` after a short real training run."""

    name: str  # key in CONFIGS, e.g. "ppo_cartpole"
    path: str  # the checkpoint directory (what Tune would hand to on_checkpoint)
    env_id: str  # gymnasium id, or the Tune-registered name for the multi-agent env
    algo_name: str  # "PPO", "APPO", "IMPALA", "DQN", "SAC"
    config: Any  # the AlgorithmConfig it was trained with
    training_iteration: int
    train_seconds: float = 0.0
    module_ids: tuple[str, ...] = field(default=("default_policy",))
    multi_agent: bool = False

    def make_env(self):
        """A fresh instance of the environment this checkpoint was trained on."""
        return envs.make_env(self.env_id)


def _model_config(**overrides: Any):
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    kwargs: dict[str, Any] = {
        "fcnet_hiddens": SMALL_NET,
        "head_fcnet_hiddens": [],
        "vf_share_layers": False,
    }
    kwargs.update(overrides)
    return DefaultModelConfig(**kwargs)


def _common(config, env_id: str, *, seed: int = 0):
    return (
        config.environment(env_id)
        .framework("torch")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .learners(num_learners=0)
        .debugging(seed=seed, log_level="ERROR")
        .reporting(min_time_s_per_iteration=0, metrics_num_episodes_for_smoothing=5)
    )


def _ppo(env_id: str, *, model: dict | None = None, **training: Any):
    from ray.rllib.algorithms.ppo import PPOConfig

    train_kwargs: dict[str, Any] = {
        "train_batch_size_per_learner": 200,
        "minibatch_size": 100,
        "num_epochs": 2,
    }
    train_kwargs.update(training)
    return (
        _common(PPOConfig(), env_id)
        .training(**train_kwargs)
        .rl_module(model_config=_model_config(**(model or {})))
    )


def _impala_like(config_cls, env_id: str, **model: Any):
    return (
        _common(config_cls(), env_id)
        .env_runners(rollout_fragment_length=50)
        # With num_learners=0 the learner runs synchronously and updates once per
        # `train_batch_size_per_learner` sampled steps; by default an iteration samples only
        # one fragment, so ask for 200 steps per iteration to get real updates.
        .training(train_batch_size_per_learner=100)
        .reporting(min_sample_timesteps_per_iteration=200)
        .rl_module(model_config=_model_config(**model))
    )


def _appo():
    from ray.rllib.algorithms.appo import APPOConfig

    return _impala_like(APPOConfig, "CartPole-v1")


def _impala():
    from ray.rllib.algorithms.impala import IMPALAConfig

    return _impala_like(IMPALAConfig, "CartPole-v1")


def _dqn(*, dueling: bool):
    from ray.rllib.algorithms.dqn import DQNConfig

    return (
        _common(DQNConfig(), "CartPole-v1")
        .env_runners(rollout_fragment_length=50)
        .training(
            train_batch_size_per_learner=32,
            num_steps_sampled_before_learning_starts=100,
            dueling=dueling,
            double_q=True,
            replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": 2000},
        )
        .reporting(min_sample_timesteps_per_iteration=200)
        .rl_module(model_config=_model_config())
    )


def _sac():
    from ray.rllib.algorithms.sac import SACConfig

    return (
        _common(SACConfig(), "Pendulum-v1")
        .env_runners(rollout_fragment_length=50)
        .training(
            train_batch_size_per_learner=32,
            num_steps_sampled_before_learning_starts=100,
            replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": 2000},
        )
        .reporting(min_sample_timesteps_per_iteration=200)
        .rl_module(model_config=_model_config())
    )


def _ppo_meanstd():
    from ray.rllib.connectors.env_to_module.mean_std_filter import MeanStdFilter

    return _ppo("CartPole-v1").env_runners(
        env_to_module_connector=lambda env, spaces, device: MeanStdFilter()
    )


def _ppo_dict_obs():
    from ray.rllib.connectors.env_to_module import FlattenObservations
    from ray.rllib.connectors.env_to_module.mean_std_filter import MeanStdFilter

    return _ppo(envs.DICT_OBS).env_runners(
        env_to_module_connector=lambda env, spaces, device: [
            FlattenObservations(),
            MeanStdFilter(),
        ]
    )


def _ppo_multiagent():
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    return (
        _ppo(envs.MULTI_AGENT)
        .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=envs.policy_mapping_fn)
        .rl_module(
            rl_module_spec=MultiRLModuleSpec(
                rl_module_specs={"p0": RLModuleSpec(), "p1": RLModuleSpec()}
            ),
        )
    )


def _ppo_custom_distribution():
    """Ray's example CustomActionDistributionRLModule (a categorical with temperature 5)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.rl_modules.classes.custom_action_distribution_rlm import (
        CustomActionDistributionRLModule,
    )

    spec = RLModuleSpec(
        module_class=CustomActionDistributionRLModule,
        model_config={"action_dist_temperature": 5.0, "hidden_dim": 16},
    )
    return (
        _common(PPOConfig(), "CartPole-v1")
        .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=2)
        .rl_module(rl_module_spec=spec)
    )


def _ppo_action_masking():
    """Ray's example ActionMaskingTorchRLModule on its ActionMaskEnv."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.rl_modules.classes.action_masking_rlm import (
        ActionMaskingTorchRLModule,
    )

    spec = RLModuleSpec(
        module_class=ActionMaskingTorchRLModule,
        model_config={"fcnet_hiddens": SMALL_NET, "head_fcnet_hiddens": []},
    )
    return (
        _common(PPOConfig(), envs.ACTION_MASK)
        .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=2)
        .rl_module(rl_module_spec=spec)
    )


LSTM_MODEL = {"use_lstm": True, "lstm_cell_size": 16, "max_seq_len": 10}


def _ppo_lstm_prev_actions_rewards():
    """LSTM fed the last two actions and rewards (Ray's PrevActionsPrevRewards example)."""
    from ray.rllib.connectors.env_to_module import FlattenObservations, PrevActionsPrevRewards

    return _ppo(envs.NOISY_CHOICE, model=LSTM_MODEL).env_runners(
        env_to_module_connector=lambda env, spaces, device: [
            PrevActionsPrevRewards(n_prev_actions=2, n_prev_rewards=2),
            FlattenObservations(),
        ]
    )


def _ppo_frame_stacking():
    """A CNN on the last 3 frames (Ray's FrameStacking connectors, env-to-module and learner)."""
    from ray.rllib.connectors.env_to_module.frame_stacking import FrameStackingEnvToModule
    from ray.rllib.connectors.learner.frame_stacking import FrameStackingLearner

    model = {"conv_filters": [[4, 4, 2], [8, 3, 2]], "fcnet_hiddens": [16]}
    return (
        _ppo(envs.FLICKER, model=model)
        .env_runners(
            env_to_module_connector=lambda env, spaces, device: FrameStackingEnvToModule(
                num_frames=3
            )
        )
        .training(learner_connector=lambda obs, act: FrameStackingLearner(num_frames=3))
    )


def _ppo_flattened(env_id: str):
    """PPO on structured observations through RLlib's FlattenObservations."""
    from ray.rllib.connectors.env_to_module import FlattenObservations

    return _ppo(env_id).env_runners(
        env_to_module_connector=lambda env, spaces, device: FlattenObservations()
    )


def _appo_pixels_255():
    """APPO with a CNN on float pixels in 0..255 (the conv filters of issue 23)."""
    from ray.rllib.algorithms.appo import APPOConfig

    model = {"conv_filters": [[8, 4, 2], [16, 3, 2]], "fcnet_hiddens": [16]}
    return _impala_like(APPOConfig, envs.PIXELS_255, **model)


# name -> (algo_name, env_id, config builder, training iterations)
CONFIGS: dict[str, tuple[str, str, Callable[[], Any], int]] = {
    "ppo_cartpole": ("PPO", "CartPole-v1", lambda: _ppo("CartPole-v1"), 2),
    "ppo_cartpole_shared": (
        "PPO",
        "CartPole-v1",
        lambda: _ppo(
            "CartPole-v1",
            model={"vf_share_layers": True, "fcnet_activation": "relu", "head_fcnet_hiddens": [8]},
        ),
        2,
    ),
    "appo_cartpole": ("APPO", "CartPole-v1", _appo, 2),
    "impala_cartpole": ("IMPALA", "CartPole-v1", _impala, 2),
    "dqn_cartpole": ("DQN", "CartPole-v1", lambda: _dqn(dueling=True), 2),
    "dqn_cartpole_plain": ("DQN", "CartPole-v1", lambda: _dqn(dueling=False), 2),
    "sac_pendulum": ("SAC", "Pendulum-v1", _sac, 2),
    "ppo_pendulum": ("PPO", "Pendulum-v1", lambda: _ppo("Pendulum-v1"), 2),
    "ppo_widebox": (
        "PPO",
        envs.WIDE_BOX,
        lambda: _ppo(envs.WIDE_BOX).environment(normalize_actions=True, clip_actions=False),
        2,
    ),
    "ppo_widebox_clip": (
        "PPO",
        envs.WIDE_BOX,
        lambda: _ppo(envs.WIDE_BOX).environment(normalize_actions=False, clip_actions=True),
        2,
    ),
    "ppo_multidiscrete": (
        "PPO",
        envs.MULTI_DISCRETE_CORRIDOR,
        lambda: _ppo(envs.MULTI_DISCRETE_CORRIDOR),
        2,
    ),
    "ppo_image": (
        "PPO",
        envs.TINY_IMAGE,
        lambda: _ppo(
            envs.TINY_IMAGE,
            model={"conv_filters": [[8, 4, 2], [16, 3, 2]], "fcnet_hiddens": [16]},
        ),
        2,
    ),
    "ppo_meanstd": ("PPO", "CartPole-v1", _ppo_meanstd, 2),
    "ppo_dict_obs": ("PPO", envs.DICT_OBS, _ppo_dict_obs, 2),
    "ppo_multiagent": ("PPO", envs.MULTI_AGENT, _ppo_multiagent, 2),
    "ppo_lstm": ("PPO", "CartPole-v1", lambda: _ppo("CartPole-v1", model=LSTM_MODEL), 1),
    "ppo_lstm_prev": ("PPO", envs.NOISY_CHOICE, _ppo_lstm_prev_actions_rewards, 1),
    "ppo_custom_distribution": ("PPO", "CartPole-v1", _ppo_custom_distribution, 1),
    "ppo_action_masking": ("PPO", envs.ACTION_MASK, _ppo_action_masking, 1),
    "ppo_frame_stacking": ("PPO", envs.FLICKER, _ppo_frame_stacking, 1),
    "ppo_keyword_dict": ("PPO", envs.KEYWORD_DICT, lambda: _ppo_flattened(envs.KEYWORD_DICT), 1),
    "ppo_nested_dict": ("PPO", envs.NESTED_DICT, lambda: _ppo_flattened(envs.NESTED_DICT), 1),
    "ppo_free_log_std": (
        "PPO",
        "Pendulum-v1",
        lambda: _ppo("Pendulum-v1", model={"free_log_std": True}),
        1,
    ),
    "appo_pixels_255": ("APPO", envs.PIXELS_255, _appo_pixels_255, 1),
    "ppo_partly_bounded": (
        "PPO",
        envs.PARTLY_BOUNDED,
        lambda: _ppo(envs.PARTLY_BOUNDED).environment(normalize_actions=True, clip_actions=True),
        1,
    ),
    "ppo_tuple_actions": ("PPO", envs.TUPLE_ACTIONS, lambda: _ppo(envs.TUPLE_ACTIONS), 0),
}


def train_checkpoint(name: str, directory: str | Path) -> TrainedCheckpoint:
    """Train configuration `name` briefly and save it under `directory`/`name`.

    Needs an initialised Ray (the `ray_session` fixture)."""
    algo_name, env_id, build, iterations = CONFIGS[name]
    config = build()
    start = time.perf_counter()
    algo = config.build_algo()
    try:
        result: dict[str, Any] = {}
        for _ in range(iterations):
            result = algo.train()
        path = Path(directory) / name
        path.mkdir(parents=True, exist_ok=True)
        algo.save(str(path))
        iteration = int(result.get("training_iteration", iterations))
    finally:
        algo.stop()
    multi_agent = config.is_multi_agent
    return TrainedCheckpoint(
        name=name,
        path=str(path),
        env_id=env_id,
        algo_name=algo_name,
        config=config,
        training_iteration=iteration,
        train_seconds=time.perf_counter() - start,
        module_ids=tuple(sorted(config.policies)) if multi_agent else ("default_policy",),
        multi_agent=multi_agent,
    )


@pytest.fixture(autouse=True)
def _global_tracking_uri_stays_with_its_test() -> Iterator[None]:
    """`mlflow.set_tracking_uri` is process-wide (and sets MLFLOW_TRACKING_URI): a test that
    calls it would hand its store to every later test in the same pytest process."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and os.environ.get("MLFLOW_TRACKING_URI") != before:
        mlflow.set_tracking_uri(None)
        if before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray with 2 CPUs for the whole session."""
    import ray

    # address="local": always a fresh cluster of our own, never one another process started.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def trained_checkpoint(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], TrainedCheckpoint]:
    """Factory: `trained_checkpoint("ppo_cartpole")` -> TrainedCheckpoint (cached per session).

    Names are the keys of `tests.conftest.CONFIGS`."""
    root = tmp_path_factory.mktemp("rllib_checkpoints")
    cache: dict[str, TrainedCheckpoint] = {}

    def get(name: str) -> TrainedCheckpoint:
        if name not in CONFIGS:
            raise KeyError(f"unknown checkpoint config {name!r}; known: {sorted(CONFIGS)}")
        if name not in cache:
            cache[name] = train_checkpoint(name, root)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def checkpoints(trained_checkpoint: Callable[[str], TrainedCheckpoint]):
    """Alias of `trained_checkpoint`."""
    return trained_checkpoint
