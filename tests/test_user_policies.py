"""The policies users train beyond RLlib's default MLP: Ray's example custom modules, action
masking, LSTMs (alone and with previous actions and rewards) and Dict observations.

RLlib's own EnvRunner plays real episodes with explore=False through a recording wrapper
(raw observations, the action the env received, the reward it returned). Then every export
format, `load_policy` on both backends and `mlflow models serve` replay those episodes,
carrying the state from step to step where the policy has one, and must choose RLlib's
actions exactly (all of these policies have discrete actions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from rllib_mlflow.export import FORMATS, export_checkpoint
from rllib_mlflow.export.parity import _play, format_runner
from rllib_mlflow.policy.observations import ObservationConverter
from rllib_mlflow.rllib.reader import read_snapshots
from tests import envs
from tests.mlflow_server import mlflow_server, post_json, start_model_server  # noqa: F401

pytestmark = pytest.mark.slow

CASES = [
    "ppo_custom_distribution",  # Ray's CustomActionDistributionRLModule, temperature 5
    "ppo_action_masking",  # Ray's ActionMaskingTorchRLModule on its ActionMaskEnv
    "ppo_lstm",  # use_lstm=True
    "ppo_lstm_prev",  # LSTM + PrevActionsPrevRewards(2, 2) + FlattenObservations
    "ppo_dict_obs",  # Dict observations through FlattenObservations + MeanStdFilter
    "ppo_frame_stacking",  # a CNN on the last 3 frames (FrameStacking connectors)
]
STATEFUL = {"ppo_lstm", "ppo_lstm_prev", "ppo_frame_stacking"}
EPISODE_STEPS = 120


@dataclass
class Case:
    name: str
    tc: Any
    export_dir: Any
    snapshot: Any
    policy_json: dict
    episodes: list = field(default_factory=list)

    @property
    def rllib_actions(self) -> np.ndarray:
        return np.array([int(action) for episode in self.episodes for _, action, _ in episode])

    @property
    def observations(self) -> list:
        return [obs for episode in self.episodes for obs, _, _ in episode]


@pytest.fixture(scope="module")
def case(trained_checkpoint, tmp_path_factory):
    """Factory: config name -> Case (trained, exported in every format, episodes played)."""
    root = tmp_path_factory.mktemp("user_policies")
    cache: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in cache:
            tc = trained_checkpoint(name)
            (exported,) = export_checkpoint(tc.path, root / name)
            (snapshot,) = read_snapshots(tc.path)
            cache[name] = Case(name, tc, exported.path, snapshot, exported.metadata)
            cache[name].episodes = envs.rllib_episodes(
                tc.config, tc.path, lambda: envs.make_env(tc.env_id), EPISODE_STEPS
            )
            assert sum(map(len, cache[name].episodes)) >= EPISODE_STEPS
        return cache[name]

    return get


def replay(run, case: Case) -> np.ndarray:
    """The actions a graph runner ({input: batch} -> {output: batch}) takes on the episodes."""
    if case.name not in STATEFUL:
        feeds = ObservationConverter(case.policy_json).feeds(case.observations)
        return run(feeds)["actions"]
    actions = []
    for episode in case.episodes:
        observations = np.array([obs for obs, _, _ in episode], np.float32)[:, None]
        rewards = np.array([reward for _, _, reward in episode], np.float32)[:, None]
        actions.append(_play(case.snapshot, run, observations, rewards)[0][:, 0])
    return np.concatenate(actions)


def step_through(policy, case: Case) -> np.ndarray:
    """A stateful policy's actions through the public API: initial_state, then step."""
    actions = []
    for episode in case.episodes:
        state, reward = policy.initial_state(1), 0.0
        for obs, _, env_reward in episode:
            action, state = policy.step(obs, state, prev_rewards=[reward])
            actions.append(int(action[0]))
            reward = env_reward
    return np.array(actions)


# -- exports -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_every_format_acts_like_rllib_on_real_episodes(case, name):
    c = case(name)
    assert c.policy_json["formats"] == list(FORMATS) and c.policy_json["refused_formats"] == {}
    assert c.policy_json["parity"]["passed"]
    for fmt in FORMATS:
        actions = replay(format_runner(fmt, str(c.export_dir), c.snapshot), c)
        np.testing.assert_array_equal(actions, c.rllib_actions, err_msg=fmt)


def test_custom_distribution_is_traced_and_its_inputs_are_not_divided(case):
    c = case("ppo_custom_distribution")
    assert c.policy_json["custom_distribution"].endswith("TorchCategoricalWithTemp")
    assert c.policy_json["how"]["saved_model"] == "converted from model.onnx by onnx2tf"
    assert "distribution's deterministic sample" in c.policy_json["how"]["onnx"]
    # The logits are the module's, not divided by the temperature (5) as the distribution
    # does in place: the parity reference hands the distribution a copy.
    assert c.policy_json["parity"]["max_abs_diff"] < 1e-5


def test_action_masking_takes_one_input_per_key_and_never_picks_a_masked_action(case):
    c = case("ppo_action_masking")
    assert c.policy_json["observation_keys"] == ["action_mask", "observations"]
    assert [i["name"] for i in c.policy_json["inputs"]] == ["action_mask", "observations"]
    masks = np.array([obs["action_mask"] for obs in c.observations])
    assert np.all(masks[np.arange(len(masks)), c.rllib_actions] == 1.0)
    # Every action allowed by exactly one mask entry: the policy must pick it.
    forced = np.zeros((32, 32), np.float32)
    forced[np.arange(32), np.arange(31, -1, -1)] = 1.0
    observations = np.zeros((32, 3), np.float32)
    feeds = {"action_mask": forced, "observations": observations}
    for fmt in FORMATS:
        actions = format_runner(fmt, str(c.export_dir), c.snapshot)(feeds)["actions"]
        np.testing.assert_array_equal(actions, np.arange(31, -1, -1), err_msg=fmt)


def test_stateful_graphs_name_their_state(case):
    c = case("ppo_lstm_prev")
    names = [i["name"] for i in c.policy_json["inputs"]]
    assert names == ["observations", "state_in_h", "state_in_c", "prev_n_actions", "prev_n_rewards"]
    assert c.policy_json["output_names"][2:] == ["state_out_h", "state_out_c"]
    assert c.policy_json["stateful"] and c.policy_json["how"]["h5"].startswith("rebuilt in Keras")


def test_frame_stacking_takes_the_previous_frames_as_an_input(case):
    c = case("ppo_frame_stacking")
    assert [h["name"] for h in c.policy_json["history"]] == ["prev_frames"]
    assert c.policy_json["history"][0]["width"] == 2 * 12 * 12  # 2 previous 12x12x1 frames
    assert c.policy_json["inputs"][0] == {
        "name": "observations",
        "dtype": "float32",
        "shape": [None, 12, 12, 1],
    }


def test_policy_json_records_the_frozen_filter(case):
    c = case("ppo_dict_obs")
    assert c.policy_json["filter"]["frozen_at_checkpoint"] is True
    assert c.policy_json["preprocessing"][-1]["frozen_at_checkpoint"] is True


@pytest.mark.parametrize("name", ["ppo_dict_obs", "dqn_cartpole", "sac_pendulum"])
def test_lifetime_env_steps_are_the_total_not_the_last_iteration(trained_checkpoint, name):
    """Each of these samples exactly 200 env steps per iteration, for 2 iterations."""
    tc = trained_checkpoint(name)
    (snapshot,) = read_snapshots(tc.path)
    assert tc.training_iteration == 2
    assert snapshot.metrics["num_env_steps_sampled_lifetime"] == 400.0


# -- load_policy, both backends ----------------------------------------------------------


@pytest.fixture(scope="module")
def registered(mlflow_server, case):  # noqa: F811
    """Every case registered as version 1 of `user-<name>` on a real tracking server."""
    from rllib_mlflow import log_checkpoint

    for name in CASES:
        log_checkpoint(case(name).tc.path, f"user-{name}", tracking_uri=mlflow_server.uri)
    return mlflow_server.uri


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorflow"])
@pytest.mark.parametrize("name", CASES)
def test_load_policy_acts_like_rllib_on_real_episodes(registered, case, name, backend):
    from rllib_mlflow import load_policy

    c = case(name)
    policy = load_policy(f"models:/user-{name}/1", backend=backend, tracking_uri=registered)
    assert policy.backend == backend and policy.is_stateful == (name in STATEFUL)
    if policy.is_stateful:
        with pytest.raises(TypeError, match=r"policy\.step\("):
            policy.compute_actions(c.observations[0])
        np.testing.assert_array_equal(step_through(policy, c), c.rllib_actions)
        return
    np.testing.assert_array_equal(policy.compute_actions(c.observations), c.rllib_actions)
    first = c.observations[0]
    assert policy.compute_actions(first).tolist() == c.rllib_actions[:1].tolist()
    if isinstance(first, dict):  # also a dict of batched arrays
        columns = {k: np.stack([o[k] for o in c.observations]) for k in first}
        np.testing.assert_array_equal(policy.compute_actions(columns), c.rllib_actions)


def test_a_stateful_step_without_the_rewards_it_needs_says_so(registered):
    from rllib_mlflow import load_policy

    policy = load_policy("models:/user-ppo_lstm_prev/1", tracking_uri=registered)
    with pytest.raises(ValueError, match="prev_rewards="):
        policy.step(np.zeros(3), policy.initial_state(1))
    with pytest.raises(ValueError, match="state must be the dict"):
        policy.step(np.zeros(3), {"h": np.zeros((1, 16))}, prev_rewards=[0.0])


def test_a_format_that_cannot_be_made_is_named_in_the_version_tags(registered, case, monkeypatch):
    import mlflow

    from rllib_mlflow import log_checkpoint
    from rllib_mlflow.export import convert

    monkeypatch.setattr(convert, "converter_missing", lambda: "onnx2tf is not installed")
    (version,) = log_checkpoint(
        case("ppo_custom_distribution").tc.path, "user-no-converter", tracking_uri=registered
    )
    tags = mlflow.MlflowClient(registered).get_model_version(version.name, version.version).tags
    assert tags["formats"] == "onnx"
    assert tags["formats_refused"].startswith("saved_model: onnx2tf is not installed")
    assert "h5: onnx2tf is not installed" in tags["formats_refused"]
    full = mlflow.MlflowClient(registered).get_model_version("user-ppo_custom_distribution", "1")
    assert full.tags["formats"] == "saved_model,h5,onnx" and "formats_refused" not in full.tags


# -- mlflow models serve ---------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_served_model_acts_like_rllib_on_real_episodes(registered, case, name, tmp_path):
    c = case(name)
    server = start_model_server(f"models:/user-{name}/1", registered, tmp_path / "serve.log")
    try:
        url = f"{server.uri}/invocations"
        served = _served_stateful(url, c) if name in STATEFUL else _served_stateless(url, c)
        np.testing.assert_array_equal(served, c.rllib_actions)
    finally:
        server.stop()


def _served_stateless(url: str, c: Case) -> np.ndarray:
    if not isinstance(c.observations[0], dict):
        return _predictions(url, {"inputs": np.asarray(c.observations).tolist()})
    keys = list(c.observations[0])
    columns = {k: np.stack([o[k] for o in c.observations]).tolist() for k in keys}
    as_columns = _predictions(url, {"inputs": columns})  # a dict of batched arrays
    rows = [{k: np.asarray(o[k]).tolist() for k in keys} for o in c.observations]
    np.testing.assert_array_equal(_predictions(url, {"instances": rows}), as_columns)
    return as_columns


def _served_stateful(url: str, c: Case) -> np.ndarray:
    """One request per step, as an environment loop would send: the response's state_*
    tensors go back with the next observation."""
    widths = {f"state_{s['name']}": s["shape"][1] for s in c.policy_json["state"]}
    widths.update({f"state_{h['name']}": h["width"] for h in c.policy_json["history"]})
    actions = []
    for episode in c.episodes:
        state = {name: [[0.0] * width] for name, width in widths.items()}
        reward = 0.0
        for obs, _, env_reward in episode:
            inputs = {"observations": [np.asarray(obs).tolist()], **state}
            if "state_prev_n_rewards" in widths:
                inputs["prev_rewards"] = [reward]
            status, body = post_json(url, {"inputs": inputs})
            assert status == 200, body
            predictions = body["predictions"]
            actions.append(predictions["actions"][0])
            state = {name: predictions[name] for name in widths}
            reward = env_reward
    return np.array(actions)


def _predictions(url: str, payload) -> np.ndarray:
    status, body = post_json(url, payload)
    assert status == 200, body
    return np.asarray(body["predictions"])
