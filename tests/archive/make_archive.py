"""Train small checkpoints with an OLD Ray release and record what that Ray did with them.

Run with the python of a throwaway virtualenv that has the old Ray installed (see
make_all.sh), never with the project's own environment:

    /tmp/oldray/2.9.3/bin/python tests/archive/make_archive.py OUT_DIR CASE...
    /tmp/oldray/2.9.3/bin/python tests/archive/make_archive.py --record-only CASE_DIR...

`--record-only` trains nothing: it restores the checkpoint a case directory already holds
(as its manifest.json names it) and records truth.npz again (training again would change
the weights).

Each case trains 1-2 iterations with a tiny network, saves the checkpoint under
OUT_DIR/<case>/ (an `algo.save()` directory, a Policy checkpoint or a whole Tune experiment),
and plays a few seeded episodes (`env.reset(seed=s)`, at most MAX_STEPS steps) with what Ray
itself does at inference (explore=False):

- old API stack: what the env runner (EnvRunnerV2, the sampler) does with the restored
  checkpoint's policy: its agent connectors (preprocessor, MeanStdFilter, state buffer, view
  requirements), `compute_actions_from_input_dict(explore=False)`, its action connectors
  (unsquash or clip), all through RLlib's `local_policy_inference`, the connectors in eval
  mode (the filter keeps the checkpoint's statistics) and reset at each episode start.
  NOT `Algorithm.compute_single_action`: with connectors (the default of every Ray here) it
  runs only the preprocessor and skips the MeanStdFilter the policy was trained behind;
- new API stack (Ray >= 2.40): the restored algorithm's EnvRunner pipelines, run as
  `SingleAgentEnvRunner._sample` runs them: env-to-module connector, the module's
  `forward_inference`, module-to-env connector; the action recorded is ACTIONS_FOR_ENV,
  what the env received.

It writes OUT_DIR/<case>/truth.npz ({policy_id}/obs, /actions, /starts, /rewards) and
OUT_DIR/<case>/manifest.json. The script adapts to the Ray version it runs on: the config
builders of Ray 2.3 and 2.5x differ, so small version branches pick the right names.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SMALL_NET = [16, 16]
SEEDS = (0, 1, 2)
MAX_STEPS = 100  # per episode
POLICY_ID = "default_policy"


def _version() -> tuple[int, int]:
    import ray

    major, minor = ray.__version__.split(".")[:2]
    return int(major), int(minor)


# ----------------------------------------------------------------------------- config builders


def _old_stack(config):
    """Force RLlib's old API stack (ModelV2, Policy, RolloutWorker), whatever the default."""
    if hasattr(config, "api_stack"):  # Ray >= 2.10
        return config.api_stack(
            enable_rl_module_and_learner=False, enable_env_runner_and_connector_v2=False
        )
    if _version() >= (2, 5):  # Ray 2.5-2.9: the RLModule/Learner switches of `experimental`
        try:
            return config.experimental(_enable_new_api_stack=False)
        except TypeError:
            return config.rl_module(_enable_rl_module_api=False).training(_enable_learner_api=False)
    return config  # Ray 2.3: there is only the old stack


def _runners(config, **options: Any):
    """No remote env runners (everything in the driver): env_runners() or rollouts()."""
    if hasattr(config, "env_runners"):
        return config.env_runners(num_env_runners=0, **options)
    return config.rollouts(num_rollout_workers=0, **options)


def _build(config):
    return config.build_algo() if hasattr(config, "build_algo") else config.build()


def _common(config, framework: str, env_id: str, old_stack: bool = True, **runners: Any):
    if old_stack:
        config = _old_stack(config)
    config = _runners(config.environment(env_id).framework(framework), **runners)
    config = config.debugging(seed=0, log_level="ERROR")
    return config.reporting(min_time_s_per_iteration=0)


def _old_model(config, hiddens: list[int] | None = None):
    return config.training(model={"fcnet_hiddens": hiddens or SMALL_NET})


def _new_model(config, hiddens: list[int] | None = None):
    """The new stack's default module config (Ray >= 2.40)."""
    try:
        from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

        return config.rl_module(model_config=DefaultModelConfig(fcnet_hiddens=hiddens or SMALL_NET))
    except ImportError:
        return config.rl_module(model_config_dict={"fcnet_hiddens": hiddens or SMALL_NET})


def _ppo_training(config, train_batch_size: int = 1000, minibatch: int = 200, epochs: int = 6):
    """Enough learning in 2 iterations that the greedy CartPole policy balances a while
    (with the old stack's default lr=5e-5 it pushes one way and falls in 9 steps)."""
    config = config.training(lr=1e-3)
    if _version() >= (2, 40):
        return config.training(
            train_batch_size=train_batch_size, minibatch_size=minibatch, num_epochs=epochs
        )
    return config.training(
        train_batch_size=train_batch_size, sgd_minibatch_size=minibatch, num_sgd_iter=epochs
    )


def ppo(framework: str, env_id: str, observation_filter: str | None = None, new: bool = False):
    from ray.rllib.algorithms.ppo import PPOConfig

    runners: dict[str, Any] = {"rollout_fragment_length": 200}
    if observation_filter and not new:
        runners["observation_filter"] = observation_filter
    if observation_filter and new:
        from ray.rllib.connectors.env_to_module import MeanStdFilter

        runners["env_to_module_connector"] = lambda env, *args, **kwargs: MeanStdFilter()
    config = _common(PPOConfig(), framework, env_id, old_stack=not new, **runners)
    config = _new_model(config) if new else _old_model(config)
    return _ppo_training(config)


def dqn(framework: str, env_id: str):
    from ray.rllib.algorithms.dqn import DQNConfig

    config = _old_model(_common(DQNConfig(), framework, env_id, rollout_fragment_length=4))
    return config.training(
        lr=1e-3,
        train_batch_size=32,
        num_steps_sampled_before_learning_starts=200,
        replay_buffer_config={"type": "MultiAgentPrioritizedReplayBuffer", "capacity": 5000},
        target_network_update_freq=200,
    ).reporting(min_sample_timesteps_per_iteration=1000)


def sac(framework: str, env_id: str, new: bool = False):
    from ray.rllib.algorithms.sac import SACConfig

    config = _common(SACConfig(), framework, env_id, old_stack=not new, rollout_fragment_length=1)
    if new:
        config = _new_model(config, [32, 32]).training(
            replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": 2000}
        )
    else:
        net = {"fcnet_hiddens": [32, 32]}
        config = config.training(
            q_model_config=net,
            policy_model_config=net,
            replay_buffer_config={"type": "MultiAgentPrioritizedReplayBuffer", "capacity": 2000},
        )
    return config.training(
        train_batch_size=64, num_steps_sampled_before_learning_starts=100
    ).reporting(min_sample_timesteps_per_iteration=300)


def impala_like(algo: str, framework: str, env_id: str):
    from ray.rllib.algorithms import appo, impala

    if algo == "APPO":
        config_cls = appo.APPOConfig
    else:  # ImpalaConfig before Ray 2.40
        config_cls = getattr(impala, "IMPALAConfig", None) or impala.ImpalaConfig
    config = _common(config_cls(), framework, env_id, rollout_fragment_length=50)
    return (
        _old_model(config)
        .training(train_batch_size=200)
        .resources(num_gpus=0)
        .reporting(min_sample_timesteps_per_iteration=400)
    )


# ----------------------------------------------------------------------------------- the cases


class Case:
    """One archive entry: algorithm, framework, stack, kind, env and the config builder."""

    def __init__(
        self,
        algorithm: str,
        framework: str,
        env_id: str,
        build: Callable[[], Any],
        kind: str = "algorithm",
        new_stack: bool = False,
        iterations: int = 2,
        notes: str = "",
    ) -> None:
        self.algorithm = algorithm
        self.framework = framework
        self.env_id = env_id
        self.build = build
        self.kind = kind
        self.new_stack = new_stack
        self.iterations = iterations
        self.notes = notes


CASES: dict[str, Case] = {
    "ppo_tf2_cartpole": Case("PPO", "tf2", "CartPole-v1", lambda: ppo("tf2", "CartPole-v1")),
    "ppo_torch_cartpole": Case("PPO", "torch", "CartPole-v1", lambda: ppo("torch", "CartPole-v1")),
    "ppo_tf2_cartpole_meanstd": Case(
        "PPO",
        "tf2",
        "CartPole-v1",
        lambda: ppo("tf2", "CartPole-v1", "MeanStdFilter"),
        notes="observation_filter=MeanStdFilter",
    ),
    "ppo_torch_pendulum_meanstd": Case(
        "PPO",
        "torch",
        "Pendulum-v1",
        lambda: ppo("torch", "Pendulum-v1", "MeanStdFilter"),
        notes="observation_filter=MeanStdFilter; normalize_actions (unsquash) as by default",
    ),
    "dqn_tf2_cartpole": Case(
        "DQN",
        "tf2",
        "CartPole-v1",
        lambda: dqn("tf2", "CartPole-v1"),
        notes="DQN defaults: dueling=True, double_q=True",
    ),
    "dqn_torch_cartpole": Case(
        "DQN",
        "torch",
        "CartPole-v1",
        lambda: dqn("torch", "CartPole-v1"),
        notes="DQN defaults: dueling=True, double_q=True",
    ),
    "sac_torch_pendulum": Case(
        "SAC", "torch", "Pendulum-v1", lambda: sac("torch", "Pendulum-v1"), iterations=1
    ),
    "sac_tf2_pendulum": Case(
        "SAC", "tf2", "Pendulum-v1", lambda: sac("tf2", "Pendulum-v1"), iterations=1
    ),
    "ppo_tf2_cartpole_policy": Case(
        "PPO",
        "tf2",
        "CartPole-v1",
        lambda: ppo("tf2", "CartPole-v1"),
        kind="policy",
        notes="policy.export_checkpoint() of a trained PPO tf2 Algorithm",
    ),
    "tune_ppo_torch_cartpole": Case(
        "PPO",
        "torch",
        "CartPole-v1",
        lambda: ppo("torch", "CartPole-v1"),
        kind="tune",
        notes="Tune experiment, 2 iterations, checkpoint_frequency=1; checkpoint = the last",
    ),
    "appo_torch_cartpole": Case(
        "APPO", "torch", "CartPole-v1", lambda: impala_like("APPO", "torch", "CartPole-v1")
    ),
    "impala_torch_cartpole": Case(
        "IMPALA", "torch", "CartPole-v1", lambda: impala_like("IMPALA", "torch", "CartPole-v1")
    ),
    # The new API stack (RLModule, Learner, EnvRunner with connectors): Ray >= 2.40.
    "new_ppo_torch_cartpole": Case(
        "PPO",
        "torch",
        "CartPole-v1",
        lambda: ppo("torch", "CartPole-v1", new=True),
        new_stack=True,
        notes="new API stack; algo.save_to_path()",
    ),
    "new_ppo_torch_pendulum_meanstd": Case(
        "PPO",
        "torch",
        "Pendulum-v1",
        lambda: ppo("torch", "Pendulum-v1", "MeanStdFilter", new=True),
        new_stack=True,
        notes="new API stack; env_to_module_connector=MeanStdFilter; algo.save_to_path()",
    ),
    "tune_new_ppo_torch_cartpole": Case(
        "PPO",
        "torch",
        "CartPole-v1",
        lambda: ppo("torch", "CartPole-v1", new=True),
        kind="tune",
        new_stack=True,
        notes="new API stack; Tune experiment, 2 iterations, checkpoint_frequency=1",
    ),
    "new_sac_torch_pendulum": Case(
        "SAC",
        "torch",
        "Pendulum-v1",
        lambda: sac("torch", "Pendulum-v1", new=True),
        new_stack=True,
        iterations=1,
        notes="new API stack; algo.save_to_path()",
    ),
}


# ------------------------------------------------------------------------------- ground truth


def _option(algo, key: str):
    config = algo.config
    return config[key] if isinstance(config, dict) else getattr(config, key)


def _columns() -> dict[str, list]:
    return {"obs": [], "actions": [], "starts": [], "rewards": []}


def _arrays(columns: dict[str, list], discrete: bool) -> dict[str, np.ndarray]:
    actions = np.stack([np.asarray(a) for a in columns["actions"]])
    return {
        f"{POLICY_ID}/obs": np.stack(columns["obs"]).astype(np.float32),
        f"{POLICY_ID}/actions": actions.astype(np.int64 if discrete else np.float32),
        f"{POLICY_ID}/starts": np.asarray(columns["starts"], dtype=bool),
        f"{POLICY_ID}/rewards": np.asarray(columns["rewards"], dtype=np.float32),
    }


def _play(env_id: str, act: Callable[[Any, bool], Any], discrete: bool) -> dict[str, np.ndarray]:
    """Seeded episodes: `act(obs, is_first_step)` gives the action the env receives."""
    import gymnasium as gym

    env = gym.make(env_id)
    columns = _columns()
    for seed in SEEDS:
        obs, _ = env.reset(seed=seed)
        for step in range(MAX_STEPS):
            action = act(obs, step == 0)
            columns["obs"].append(np.asarray(obs))
            columns["actions"].append(action)
            columns["starts"].append(step == 0)
            obs, reward, terminated, truncated, _ = env.step(action)
            columns["rewards"].append(float(reward))
            if terminated or truncated:
                break
    env.close()
    return _arrays(columns, discrete)


def _discrete(env_id: str) -> bool:
    import gymnasium as gym

    return isinstance(gym.make(env_id).action_space, gym.spaces.Discrete)


ENV_ID = 0  # what the connectors key an episode's trajectory by (one env, one agent)


def _connector_actor(policy) -> tuple[Callable[[Any, bool], Any], Callable[[], None]]:
    """`act(obs, first)` as the env runner (EnvRunnerV2) computes the action the env gets:
    RLlib's `local_policy_inference` runs the policy's agent connectors (preprocessor,
    MeanStdFilter, state buffer, view requirements), `compute_actions_from_input_dict` and
    the action connectors (NormalizeActions / ClipActions). The connectors are in eval mode
    (a MeanStdFilter keeps the checkpoint's statistics) and reset at each episode start, as
    EnvRunnerV2 resets them for a new episode. Also returns an undo for the Ray 2.3 patch."""
    import inspect

    from ray.rllib.env.base_env import _DUMMY_AGENT_ID
    from ray.rllib.utils.policy import local_policy_inference

    policy.agent_connectors.in_eval()
    policy.action_connectors.in_eval()
    kwargs: dict[str, Any] = {}
    patched = "explore" not in inspect.signature(local_policy_inference).parameters
    if patched:  # Ray 2.3: no explore argument (the policy's config would decide: True)
        original = policy.compute_actions_from_input_dict

        def greedy(*args, **kw):
            kw["explore"] = False
            return original(*args, **kw)

        policy.compute_actions_from_input_dict = greedy
    else:
        kwargs["explore"] = False

    def undo() -> None:
        if patched:
            del policy.compute_actions_from_input_dict

    def act(obs, first: bool):
        if first:  # EnvRunnerV2 resets the agent connectors (action ones have no state)
            policy.agent_connectors.reset(ENV_ID)
        outputs = local_policy_inference(policy, ENV_ID, _DUMMY_AGENT_ID, obs, **kwargs)
        actions, _state_out, _fetches = outputs[0]
        return actions

    return act, undo


def _play_connectors(policy, env_id: str) -> dict[str, np.ndarray]:
    act, undo = _connector_actor(policy)
    try:
        return _play(env_id, act, _discrete(env_id))
    finally:
        undo()


def truth_old_stack(algo, env_id: str) -> dict[str, np.ndarray]:
    """The env runner's path through the policy's connectors (see `_connector_actor`).
    A policy without connectors (enable_connectors=False, never the default of the Rays
    here): `compute_single_action`, whose no-connector branch runs the worker's preprocessor
    and filter (update=False) itself, with the env runner's unsquash/clip passed explicitly
    (with the defaults compute_single_action skips clip_actions)."""
    policy = algo.get_policy(POLICY_ID)
    if policy.agent_connectors is not None:
        return _play_connectors(policy, env_id)
    kwargs = {
        "policy_id": POLICY_ID,
        "explore": False,
        "unsquash_action": _option(algo, "normalize_actions"),
        "clip_action": _option(algo, "clip_actions"),
    }

    def act(obs, first: bool):
        return algo.compute_single_action(obs, **kwargs)

    return _play(env_id, act, _discrete(env_id))


def truth_policy(policy, env_id: str, normalize: bool, clip: bool) -> dict[str, np.ndarray]:
    """A restored Policy checkpoint: through its own restored connectors as the env runner
    would run them; without connectors (and so without a filter, which lives in them), its
    `compute_single_action(explore=False)` plus the unsquash/clip."""
    from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

    if policy.agent_connectors is not None:
        return _play_connectors(policy, env_id)

    def act(obs, first: bool):
        action = policy.compute_single_action(obs, explore=False)[0]
        if normalize:
            return unsquash_action(action, policy.action_space_struct)
        return clip_action(action, policy.action_space_struct) if clip else action

    return _play(env_id, act, _discrete(env_id))


def truth_new_stack(algo, env_id: str) -> dict[str, np.ndarray]:
    """The restored algorithm's local EnvRunner, one step at a time as its `_sample` loop
    does: env-to-module connector (e.g. MeanStdFilter), `module.forward_inference`,
    module-to-env connector (GetActions, unsquash/clip...); the env gets ACTIONS_FOR_ENV.
    A MeanStdFilter connector keeps the checkpoint's statistics (update_stats=False): the
    EnvRunner would go on updating them at every step, even with explore=False."""
    import gymnasium as gym
    from ray.rllib.core.columns import Columns
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    runner = _local_env_runner(algo)
    for piece in getattr(runner._env_to_module, "connectors", []):
        if hasattr(piece, "_update_stats"):
            piece._update_stats = False
    module = runner.module
    env = gym.make(env_id)
    columns = _columns()
    for seed in SEEDS:
        obs, info = env.reset(seed=seed)
        episode = SingleAgentEpisode(
            observation_space=runner.env.single_observation_space,
            action_space=runner.env.single_action_space,
        )
        episode.add_env_reset(observation=obs, infos=info)
        shared: dict[str, Any] = {}
        for step in range(MAX_STEPS):
            batch = runner._env_to_module(
                rl_module=module, episodes=[episode], explore=False, shared_data=shared
            )
            out = module.forward_inference(batch)
            out = runner._module_to_env(
                rl_module=module, batch=out, episodes=[episode], explore=False, shared_data=shared
            )
            actions = out.pop(Columns.ACTIONS)
            action = out.pop(Columns.ACTIONS_FOR_ENV, actions)[0]
            columns["obs"].append(np.asarray(obs))
            columns["actions"].append(np.asarray(action))
            columns["starts"].append(step == 0)
            obs, reward, terminated, truncated, info = env.step(action)
            columns["rewards"].append(float(reward))
            episode.add_env_step(
                observation=obs,
                action=actions[0],
                reward=reward,
                infos=info,
                terminated=terminated,
                truncated=truncated,
                extra_model_outputs={k: v[0] for k, v in out.items()},
            )
            if terminated or truncated:
                break
    env.close()
    return _arrays(columns, _discrete(env_id))


def squashed_gaussian_note() -> str:
    """Whether this Ray's new-stack SAC (TorchSquashedGaussian) acts with tanh(mean) at
    explore=False: Ray 2.40's `to_deterministic()` returns the mean before the tanh."""
    import torch
    from ray.rllib.models.torch.torch_distributions import TorchSquashedGaussian

    dist = TorchSquashedGaussian.from_logits(torch.tensor([[0.5, 0.0]]))
    value = float(dist.to_deterministic().sample()[0, 0])
    if abs(value - 0.5) < 1e-6:
        return (
            "TorchSquashedGaussian.to_deterministic() of this Ray gives the Gaussian mean "
            "WITHOUT tanh: at explore=False the env got unsquash(clip(mean, -1, 1))"
        )
    return f"TorchSquashedGaussian.to_deterministic() gives {value:.6f} for mean 0.5"


def _local_env_runner(algo):
    group = getattr(algo, "env_runner_group", None) or algo.workers
    return group.local_env_runner if hasattr(group, "local_env_runner") else group.local_worker()


# ---------------------------------------------------------------------------------- training


def _checkpoint_dir(root: Path) -> Path:
    """The directory holding rllib_checkpoint.json (what `algo.save` wrote) under root."""
    found = sorted(p.parent for p in root.rglob("rllib_checkpoint.json"))
    if not found:
        raise FileNotFoundError(f"no rllib_checkpoint.json under {root}")
    return min(found, key=lambda p: len(p.parts))


def _restore(path: Path):
    from ray.rllib.algorithms.algorithm import Algorithm

    return Algorithm.from_checkpoint(str(path))


def _save(algo, path: Path, new_stack: bool) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if new_stack and hasattr(algo, "save_to_path"):
        algo.save_to_path(str(path))
    else:
        algo.save(str(path))
    return _checkpoint_dir(path)


def _truth(algo, case: Case) -> dict[str, np.ndarray]:
    return (
        truth_new_stack(algo, case.env_id) if case.new_stack else truth_old_stack(algo, case.env_id)
    )


def run_algorithm(case: Case, out: Path) -> tuple[Path, int, dict[str, np.ndarray], str]:
    algo = _build(case.build())
    result: dict[str, Any] = {}
    try:
        for _ in range(case.iterations):
            result = algo.train()
        checkpoint = _save(algo, out / "checkpoint", case.new_stack)
    finally:
        algo.stop()
    # Ray's actions from the saved checkpoint, not from the training algorithm.
    restored = _restore(checkpoint)
    try:
        truth = _truth(restored, case)
    finally:
        restored.stop()
    return checkpoint, int(result["training_iteration"]), truth, ""


def run_policy(case: Case, out: Path) -> tuple[Path, int, dict[str, np.ndarray], str]:
    from ray.rllib.policy.policy import Policy

    algo = _build(case.build())
    try:
        result: dict[str, Any] = {}
        for _ in range(case.iterations):
            result = algo.train()
        checkpoint = out / "checkpoint"
        algo.get_policy(POLICY_ID).export_checkpoint(str(checkpoint))
        normalize = bool(_option(algo, "normalize_actions"))
        clip = bool(_option(algo, "clip_actions"))
        from_algo = truth_old_stack(algo, case.env_id)
    finally:
        algo.stop()
    policy = Policy.from_checkpoint(str(checkpoint))
    truth = truth_policy(policy, case.env_id, normalize, clip)
    same = all(np.array_equal(truth[k], from_algo[k]) for k in truth)
    note = f"truth: {POLICY_TRUTH}; identical to the exporting Algorithm's actions: {same}"
    return checkpoint, int(result["training_iteration"]), truth, note


def run_tune(case: Case, out: Path) -> tuple[Path, int, dict[str, np.ndarray], str]:
    from ray import tune

    try:
        from ray.train import CheckpointConfig, RunConfig
    except ImportError:  # Ray 2.3
        from ray.air import CheckpointConfig, RunConfig
    config = case.build()
    storage = out.resolve() / "experiment"
    where = {"storage_path": str(storage)} if _version() >= (2, 7) else {"local_dir": str(storage)}
    run_config = RunConfig(
        name=f"{case.algorithm}_tune",
        stop={"training_iteration": case.iterations},
        checkpoint_config=CheckpointConfig(checkpoint_frequency=1, checkpoint_at_end=True),
        verbose=0,
        **where,
    )
    tuner = tune.Tuner(case.algorithm, param_space=config.to_dict(), run_config=run_config)
    results = tuner.fit()
    result = results[0]
    if result.error:
        raise RuntimeError(f"Tune trial failed: {result.error}")
    found = sorted(p for p in storage.rglob("checkpoint_*") if p.is_dir())
    checkpoint = found[-1]
    restored = _restore(checkpoint)
    try:
        truth = _truth(restored, case)
    finally:
        restored.stop()
    note = f"{len(found)} checkpoints in the experiment; truth from the last"
    return checkpoint, int(result.metrics["training_iteration"]), truth, note


RUNNERS = {"algorithm": run_algorithm, "policy": run_policy, "tune": run_tune}
POLICY_TRUTH = (
    "Policy.from_checkpoint(...) through its restored connectors "
    "(local_policy_inference, explore=False)"
)
RECORD_ONLY_NOTE = "truth re-recorded from this checkpoint (make_archive.py --record-only)"


def record_only(case_dir: Path) -> None:
    """Restore the checkpoint a case directory holds and record truth.npz again, without
    training; manifest.json keeps everything but `steps` and gets a note saying so."""
    import ray
    from ray.rllib.policy.policy import Policy

    manifest = json.loads((case_dir / "manifest.json").read_text())
    if manifest["ray_version"] != ray.__version__:
        raise SystemExit(
            f"{case_dir} was made by Ray {manifest['ray_version']}, this is {ray.__version__}"
        )
    case = CASES[manifest["case"]]
    checkpoint = (case_dir / manifest["checkpoint"]).resolve()
    if case.framework == "tf2":
        # As building a config does at training: RLlib's first import of TF turns v2
        # behaviour off, then the tf2 config switches eager execution on; restoring first
        # (Ray 2.55) makes TF ops before that and eager can no longer be switched on.
        from ray.rllib.utils.framework import try_import_tf

        tf1, _, _ = try_import_tf()
        if not tf1.executing_eagerly():
            tf1.enable_eager_execution()
    if case.kind == "policy":
        policy = Policy.from_checkpoint(str(checkpoint))
        normalize = bool(policy.config.get("normalize_actions"))
        clip = bool(policy.config.get("clip_actions"))
        truth = truth_policy(policy, case.env_id, normalize, clip)
        notes = [case.notes, f"truth: {POLICY_TRUTH}"]
    else:
        restored = _restore(checkpoint)
        try:
            truth = _truth(restored, case)
        finally:
            restored.stop()
        notes = [n for n in manifest["notes"].split("; ") if n != RECORD_ONLY_NOTE]
    np.savez_compressed(case_dir / "truth.npz", **truth)
    manifest["steps"] = int(len(truth[f"{POLICY_ID}/actions"]))
    manifest["notes"] = "; ".join(n for n in (*notes, RECORD_ONLY_NOTE) if n)
    (case_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{case_dir}: truth re-recorded, {manifest['steps']} steps")


def make_case(name: str, out_root: Path) -> None:
    import ray

    case = CASES[name]
    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    checkpoint, iteration, truth, note = RUNNERS[case.kind](case, out)
    if case.new_stack and case.algorithm == "SAC":
        note = "; ".join(n for n in (note, squashed_gaussian_note()) if n)
    np.savez_compressed(out / "truth.npz", **truth)
    manifest = {
        "ray_version": ray.__version__,
        "case": name,
        "algorithm": case.algorithm,
        "framework": case.framework,
        "api_stack": "new" if case.new_stack else "old",
        "kind": case.kind,
        "env_id": case.env_id,
        "policy_ids": [POLICY_ID],
        "checkpoint": checkpoint.relative_to(out).as_posix(),
        "training_iteration": iteration,
        "steps": int(len(truth[f"{POLICY_ID}/actions"])),
        "episode_seeds": list(SEEDS),
        "notes": "; ".join(n for n in (case.notes, note) if n),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{name}: {manifest['checkpoint']} iteration {iteration}, {manifest['steps']} steps")


def main(out: str, names: list[str], record: list[str] | None = None) -> None:
    """Train and record the cases `names` under `out`, or (record) re-record the truth
    of the existing case directories `record` from their checkpoints."""
    if importlib.util.find_spec("tf_keras"):  # Ray >= 2.40 old-stack TF2 wants Keras 2
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import ray

    if (2, 7) <= _version() < (2, 10):
        # Tune 2.7-2.9 stages trial directories in ~/ray_results/<name> and syncs them to
        # storage_path: a fresh staging directory keeps earlier runs out of the experiment.
        # (Later Rays write to storage_path directly and refuse this variable.)
        os.environ["RAY_AIR_LOCAL_CACHE_DIR"] = tempfile.mkdtemp(prefix="oldray_results_")

    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {sorted(CASES)}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for name in names:
            make_case(name, Path(out))
        for case_dir in record or []:
            record_only(Path(case_dir))
    finally:
        ray.shutdown()


def table(archive: str) -> str:
    """The README's table of cases, from the manifests under `archive` (any Python)."""
    rows = [
        "| Ray | case | algorithm | framework | stack | kind | env | steps | size |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    manifests = sorted(
        Path(archive).glob("ray-*/*/manifest.json"),
        key=lambda p: (tuple(int(x) for x in p.parts[-3][4:].split(".")), p.parts[-2]),
    )
    for path in manifests:
        m = json.loads(path.read_text())
        size = sum(f.stat().st_size for f in path.parent.rglob("*") if f.is_file())
        rows.append(
            f"| {m['ray_version']} | `{m['case']}` | {m['algorithm']} | {m['framework']} "
            f"| {m['api_stack']} | {m['kind']} | {m['env_id']} | {m['steps']} "
            f"| {size // 1024} KB |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1] == "--table":  # make_archive.py --table tests/archive
        print(table(sys.argv[2]))
    elif sys.argv[1] == "--record-only":  # make_archive.py --record-only CASE_DIR...
        main("", [], record=sys.argv[2:])
    else:
        main(sys.argv[1], sys.argv[2:])
