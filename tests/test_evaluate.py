"""`rllib-mlflow evaluate`: seeded episodes per version without Ray, tags, run, plot, alias,
and, with --video, a replay per version; the versions' cards show the evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from mlflow import MlflowClient

from rllib_mlflow import load_policy, log_checkpoint
from rllib_mlflow.play.evaluation import EVAL_EXPERIMENT
from tests.cards import assert_card_and_replay
from tests.custom_envs import episode_returns

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("rllib-mlflow"))


def _returns(uri: str, name: str, version: int, episodes: int, seed: int) -> list[float]:
    policy = load_policy(f"models:/{name}/{version}", tracking_uri=uri)
    return episode_returns(policy, gym.make("CartPole-v1"), episodes, seed)


def test_evaluate_tags_versions_logs_a_run_with_a_plot_and_moves_eval_best(
    trained_checkpoint, tmp_path
):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    checkpoints = [trained_checkpoint("ppo_cartpole"), trained_checkpoint("ppo_cartpole_shared")]
    for iteration, checkpoint in enumerate(checkpoints, start=1):
        log_checkpoint(
            checkpoint.path, "evaluated", training_iteration=iteration, formats=["onnx"],
            metrics={"env_runners": {"episode_return_mean": 10.0 * iteration}}, tracking_uri=uri,
        )  # fmt: skip
    done = subprocess.run(
        [CLI, "evaluate", "evaluated", "--env", "CartPole-v1", "--episodes", "4", "--seed", "7"]
        + ["--move-alias", "--video", "--json", "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "evaluate evaluated" in done.stderr and "2/2" in done.stderr  # the progress bar
    report = json.loads(done.stdout)
    assert [v["version"] for v in report["versions"]] == [1, 2]
    assert all(v["replay"] == "replay.gif" for v in report["versions"])
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    means = {}
    for number in (1, 2):
        tags = client.get_model_version("evaluated", str(number)).tags
        expected = _returns(uri, "evaluated", number, episodes=4, seed=7)
        assert float(tags["eval.episode_return_mean"]) == pytest.approx(np.mean(expected))
        assert float(tags["eval.episode_return_min"]) == min(expected)
        assert tags["eval.episodes"] == "4" and tags["eval.env_id"] == "CartPole-v1"
        means[number] = np.mean(expected)
        card = assert_card_and_replay(client, client.get_model_version("evaluated", str(number)))
        assert f"{float(tags['eval.episode_return_mean']):.4g} ± " in card
        assert "env.reset(seed=7)" in card  # the replay is the first evaluation episode
    best = max(means, key=means.get)
    assert str(client.get_registered_model("evaluated").aliases["eval-best"]) == str(best)
    assert report["best_version"] == best
    family = client.get_registered_model("evaluated").description
    assert "`eval-best` | " + str(best) in family  # the family card names it
    experiment = client.get_experiment_by_name(EVAL_EXPERIMENT)
    run = client.search_runs([experiment.experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "eval/episode_return_mean")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "evaluation_evaluated.png" in artifacts
    plot = client.download_artifacts(run.info.run_id, "evaluation_evaluated.png", str(tmp_path))
    assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_carries_a_stateful_policys_state_through_each_episode(
    trained_checkpoint, tmp_path
):
    """An LSTM policy is played with `initial_state`/`step` (compute_actions refuses it),
    and its replay is recorded the same way."""
    from rllib_mlflow.play.evaluation import evaluate

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    checkpoint = trained_checkpoint("ppo_lstm")
    log_checkpoint(checkpoint.path, "stateful", formats=["onnx"], tracking_uri=uri)
    report = evaluate("stateful", env="CartPole-v1", episodes=2, seed=3, tracking_uri=uri,
                      workers=1, video=True)  # fmt: skip
    policy = load_policy("models:/stateful/1", tracking_uri=uri)
    env, expected = gym.make("CartPole-v1"), []
    for episode in range(2):
        observation, _ = env.reset(seed=3 + episode)
        state, total, done = policy.initial_state(1), 0.0, False
        while not done:
            actions, state = policy.step(np.asarray(observation)[None], state)
            observation, reward, terminated, truncated, _ = env.step(actions[0])
            total, done = total + reward, terminated or truncated
        expected.append(total)
    assert list(report.versions[0].returns) == expected
    assert report.versions[0].replay == "replay.gif"
