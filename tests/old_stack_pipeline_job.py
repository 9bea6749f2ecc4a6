"""Old-API-stack training for tests/test_old_stack_pipeline.py, in one subprocess whose Ray
processes get TF_USE_LEGACY_KERAS=1 (RLlib's old-stack TF2 policies need it) through the
job's runtime_env, and whose driver does not have it:

    python -m tests.old_stack_pipeline_job OUT TRACKING_URI

- "tf2_pendulum": a Tune experiment of PPO TF2 on Pendulum with MeanStdFilter (Box actions
  unsquashed), every checkpoint registered by `MLflowCheckpointCallback` as TUNE_MODEL;
- "torch_two_policy": a Tune experiment of PPO torch with policies p0 and p1, no callback
  (backfilled by the test with `rllib-mlflow register`);
- "torch_lstm" and "tf2_lstm": `algo.save()` checkpoints of PPO with use_lstm on CartPole.

For each, real episodes played by RLlib itself (`Algorithm.compute_single_action(obs,
explore=False)`, with `state=` carried for the LSTMs) from its last checkpoint are saved in
OUT/<name>.truth.npz as {policy_id}/obs, {policy_id}/actions; OUT/runs.json says where all is.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

TUNE_MODEL = "old-stack-tf2-pendulum"
ITERATIONS = 2
EPISODES = 3
MAX_STEPS = 100
LSTM_MODEL = {"use_lstm": True, "lstm_cell_size": 8, "max_seq_len": 10}


def _config(framework: str, env_id: str, model: dict | None = None, **training: Any):
    from ray.rllib.algorithms.ppo import PPOConfig

    return (
        PPOConfig()
        .api_stack(enable_rl_module_and_learner=False, enable_env_runner_and_connector_v2=False)
        .framework(framework)
        .environment(env_id)
        .env_runners(num_env_runners=0)
        .training(
            model={"fcnet_hiddens": [16, 16], **(model or {})},
            **{"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1, **training},
        )
        .debugging(seed=0, log_level="ERROR")
        .reporting(min_time_s_per_iteration=0)
    )


def _tune(config, storage: str, name: str, callbacks: list) -> str:
    from ray import tune

    results = tune.Tuner(
        "PPO",
        param_space=config,
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            stop={"training_iteration": ITERATIONS},
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1),
            verbose=0,
        ),
    ).fit()
    if results.errors:
        raise SystemExit(f"{name}: trials failed: {results.errors}")
    return results[0].checkpoint.path


def play(algo, env_id: str, multi_agent: bool = False) -> dict[str, np.ndarray]:
    """Real episodes acted by RLlib itself (explore=False), each policy's state carried:
    {policy_id}/obs, /actions and /starts (True on an episode's first step)."""
    from tests import envs

    env = envs.make_env(env_id)
    mapping = algo.config.policy_mapping_fn
    seen: dict[str, tuple[list, list, list]] = {}
    for episode in range(EPISODES):
        obs, _ = env.reset(seed=episode)
        states: dict[str, list] = {}
        for _ in range(MAX_STEPS):
            per_agent = obs if multi_agent else {"agent": obs}
            actions = {}
            for agent, agent_obs in per_agent.items():
                pid = mapping(agent, None) if multi_agent else "default_policy"
                initial = algo.get_policy(pid).get_initial_state()
                state = states.get(agent, initial)
                observations, acted, starts = seen.setdefault(pid, ([], [], []))
                starts.append(agent not in states)
                if initial:
                    action, states[agent], _ = algo.compute_single_action(
                        agent_obs, state=state, policy_id=pid, explore=False
                    )
                else:
                    action = algo.compute_single_action(agent_obs, policy_id=pid, explore=False)
                actions[agent] = action
                observations.append(np.asarray(agent_obs))
                acted.append(np.asarray(action))
            obs, _, terminated, truncated, _ = env.step(
                actions if multi_agent else actions["agent"]
            )
            done = terminated.get("__all__") if multi_agent else terminated or truncated
            if done:
                break
    return {
        f"{pid}/{kind}": np.stack(values)
        for pid, (observations, acted, starts) in seen.items()
        for kind, values in (("obs", observations), ("actions", acted), ("starts", starts))
    }


def _record(name: str, checkpoint: str, out: str, env_id: str, multi_agent=False) -> dict:
    from ray.rllib.algorithms.algorithm import Algorithm

    algo = Algorithm.from_checkpoint(checkpoint)
    try:
        np.savez(Path(out, f"{name}.truth.npz"), **play(algo, env_id, multi_agent))
    finally:
        algo.stop()
    return {"checkpoint": checkpoint, "truth": str(Path(out, f"{name}.truth.npz"))}


def _saved_lstm(framework: str, out: str) -> str:
    algo = _config(framework, "CartPole-v1", LSTM_MODEL).build_algo()
    try:
        algo.train()
        return algo.save(str(Path(out, f"{framework}_lstm"))).checkpoint.path
    finally:
        algo.stop()


def _in_ray_worker(function, *args, **kwargs):
    """Run `function` in a Ray worker, which has TF_USE_LEGACY_KERAS=1 from the job's
    runtime_env (this driver does not), TensorFlow imported before RLlib."""
    import ray

    def call():
        import tensorflow  # noqa: F401  (before RLlib, which would leave it in graph mode)

        from tests import envs  # noqa: F401  (registers the test environments)

        return function(*args, **kwargs)

    return ray.get(ray.remote(num_cpus=1, max_calls=1)(call).remote())


def main(out: str, tracking_uri: str) -> None:
    import ray

    from rllib_mlflow import MLflowCheckpointCallback
    from tests import envs

    # As a user may set it: for Ray's processes only, not in this driver's environment, so
    # the export worker the callback starts must arrange it itself.
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1"}},
    )
    runs: dict[str, dict] = {}
    try:
        pendulum = _config("tf2", "Pendulum-v1", train_batch_size=400).env_runners(
            observation_filter="MeanStdFilter"
        )
        callback = MLflowCheckpointCallback(TUNE_MODEL, tracking_uri=tracking_uri)
        last = _tune(pendulum, str(Path(out, "results")), "tf2_pendulum", [callback])
        runs["tf2_pendulum"] = _in_ray_worker(_record, "tf2_pendulum", last, out, "Pendulum-v1")

        two_policy = _config("torch", envs.MULTI_AGENT).multi_agent(
            policies={"p0", "p1"}, policy_mapping_fn=envs.policy_mapping_fn
        )
        last = _tune(two_policy, str(Path(out, "results")), "torch_two_policy", [])
        runs["torch_two_policy"] = _in_ray_worker(
            _record, "torch_two_policy", last, out, envs.MULTI_AGENT, multi_agent=True
        )
        for framework in ("torch", "tf2"):
            name = f"{framework}_lstm"
            checkpoint = _in_ray_worker(_saved_lstm, framework, out)
            runs[name] = _in_ray_worker(_record, name, checkpoint, out, "CartPole-v1")
    finally:
        ray.shutdown()
    Path(out, "runs.json").write_text(json.dumps(runs))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
