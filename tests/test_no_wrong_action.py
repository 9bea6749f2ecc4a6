"""Common RLlib configs whose exports once acted wrongly or were refused (issue 23).

RLlib's own EnvRunner, restored from each checkpoint, plays real episodes with explore=False
through a recording wrapper (the raw observation and the action the env received). Every
export format, `load_policy` on both backends and `mlflow models serve` then act on those raw
observations, through the same code users call, and must send the env RLlib's actions: the
same discrete actions, continuous ones within 1e-5 relative.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rllib_mlflow.errors import CheckpointError, UnsupportedModuleError
from rllib_mlflow.export import FORMATS, export_checkpoint
from rllib_mlflow.export.parity import format_runner
from rllib_mlflow.policy.observations import ObservationConverter
from rllib_mlflow.rllib.reader import read_snapshots
from tests import envs
from tests.mlflow_server import mlflow_server, post_json, start_model_server  # noqa: F401

pytestmark = pytest.mark.slow

DICT_CASES = ["ppo_keyword_dict", "ppo_nested_dict"]
CASES = [*DICT_CASES, "ppo_free_log_std", "appo_pixels_255", "ppo_partly_bounded"]
EPISODE_STEPS = 100
RELATIVE = 1e-5


@dataclass
class Case:
    name: str
    tc: Any
    export_dir: Any
    snapshot: Any
    policy_json: dict
    steps: list = field(default_factory=list)

    @property
    def observations(self) -> list:
        return [obs for obs, _ in self.steps]

    @property
    def rllib_actions(self) -> np.ndarray:
        return np.stack([action for _, action in self.steps])


def assert_rllib_actions(actions, c: Case, what: str = "") -> None:
    actions = np.asarray(actions).reshape(c.rllib_actions.shape)
    if c.snapshot.action_rule.is_discrete:
        mismatches = int(np.sum(actions != c.rllib_actions))
        assert mismatches == 0, f"{what}: {mismatches} of {len(actions)} actions differ"
        return
    scale = np.maximum(1.0, np.abs(c.rllib_actions))
    worst = float(np.max(np.abs(actions - c.rllib_actions) / scale))
    assert worst <= RELATIVE, f"{what}: relative difference {worst}"


@pytest.fixture(scope="module")
def case(trained_checkpoint, tmp_path_factory):
    """Factory: config name -> Case (trained, exported in every format, RLlib's steps)."""
    root = tmp_path_factory.mktemp("no_wrong_action")
    cache: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in cache:
            tc = trained_checkpoint(name)
            (exported,) = export_checkpoint(tc.path, root / name)
            (snapshot,) = read_snapshots(tc.path)
            cache[name] = Case(name, tc, exported.path, snapshot, exported.metadata)
            episodes = envs.rllib_episodes(
                tc.config, tc.path, lambda: envs.make_env(tc.env_id), EPISODE_STEPS
            )
            cache[name].steps = [(obs, action) for e in episodes for obs, action, _ in e]
            assert len(cache[name].steps) >= EPISODE_STEPS
        return cache[name]

    return get


# -- exports -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_every_format_sends_the_env_rllibs_actions(case, name):
    c = case(name)
    assert c.policy_json["formats"] == list(FORMATS) and c.policy_json["refused_formats"] == {}
    assert c.policy_json["parity"]["passed"]
    feeds = ObservationConverter(c.policy_json).feeds(c.observations)
    for fmt in FORMATS:
        actions = format_runner(fmt, str(c.export_dir), c.snapshot)(feeds)["actions"]
        assert_rllib_actions(actions, c, fmt)


def test_dict_keys_out_of_sorted_order_are_what_the_case_trains_on(case):
    spaces = case("ppo_keyword_dict").policy_json["observation_space"]["spaces"]
    assert list(spaces) == ["pos", "flag", "vel"]
    nested = case("ppo_nested_dict").policy_json["observation_space"]["spaces"]
    assert list(nested) == ["target", "parts", "bias"]
    assert list(nested["parts"]["spaces"][1]["spaces"]) == ["speed", "gear"]


def test_free_log_std_gives_rllibs_distribution_inputs_at_any_batch_size(case):
    import torch

    from rllib_mlflow.rllib.reference import restore_rl_module

    c = case("ppo_free_log_std")
    module = restore_rl_module(c.snapshot)
    for rows in (1, 3, 7):
        observations = np.asarray(c.observations[:rows], np.float32)
        with torch.no_grad():
            want = module.forward_inference({"obs": torch.from_numpy(observations)})
        want = want["action_dist_inputs"].numpy()
        assert want.shape == (rows, 2)  # mean and the free log std of Pendulum's 1-D action
        for fmt in FORMATS:
            run = format_runner(fmt, str(c.export_dir), c.snapshot)
            got = run({"observations": observations})["action_dist_inputs"]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=fmt)


# -- load_policy, both backends ----------------------------------------------------------


@pytest.fixture(scope="module")
def registered(mlflow_server, case):  # noqa: F811
    from rllib_mlflow import log_checkpoint

    for name in CASES:  # the case fixture's export already ran the parity check
        path, uri = case(name).tc.path, mlflow_server.uri
        log_checkpoint(path, f"nwa-{name}", verify=False, tracking_uri=uri)
    return mlflow_server.uri


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorflow"])
@pytest.mark.parametrize("name", CASES)
def test_load_policy_sends_the_env_rllibs_actions(registered, case, name, backend):
    from rllib_mlflow import load_policy

    c = case(name)
    policy = load_policy(f"models:/nwa-{name}/1", backend=backend, tracking_uri=registered)
    assert policy.backend == backend
    assert_rllib_actions(policy.compute_actions(c.observations), c, "a batch")
    one_by_one = [policy.compute_actions(obs)[0] for obs in c.observations[:20]]
    assert_rllib_actions(one_by_one, Case(**{**c.__dict__, "steps": c.steps[:20]}), "one")
    if name == "ppo_keyword_dict":  # also a dict of batched arrays
        columns = {k: np.stack([o[k] for o in c.observations]) for k in c.observations[0]}
        assert_rllib_actions(policy.compute_actions(columns), c, "columns")


# -- mlflow models serve ---------------------------------------------------------------------


def test_served_keyword_dict_sends_the_env_rllibs_actions(registered, case, tmp_path):
    c = case("ppo_keyword_dict")
    server = start_model_server("models:/nwa-ppo_keyword_dict/1", registered, tmp_path / "log")
    try:
        url = f"{server.uri}/invocations"
        keys = list(c.observations[0])  # pos, flag, vel: the space's order, not RLlib's
        rows = [{k: np.asarray(o[k]).tolist() for k in keys} for o in c.observations]
        status, body = post_json(url, {"instances": rows})
        assert status == 200, body
        assert_rllib_actions(body["predictions"], c, "served rows")
        columns = {k: np.stack([o[k] for o in c.observations]).tolist() for k in keys}
        status, body = post_json(url, {"inputs": columns})
        assert status == 200, body
        assert_rllib_actions(body["predictions"], c, "served columns")
    finally:
        server.stop()


def test_cnn_on_0_255_pixels_is_exported_in_every_format(case):
    parity = case("appo_pixels_255").policy_json["parity"]
    print("pixels parity", {f: r["max_abs_diff"] for f, r in parity["formats"].items()})
    assert set(parity["formats"]) == set(FORMATS) and parity["failed"] == {}


def test_tolerance_tells_float32_rounding_from_real_disagreement():
    from rllib_mlflow.export.parity import _compare
    from rllib_mlflow.rllib.snapshot import ActionRule

    rule = ActionRule("categorical", (3,))
    logits = np.array([[0.2, -0.4, 0.9], [0.1, 0.3, -0.2]], np.float32)
    actions = np.argmax(logits, axis=-1)
    activations = np.array([300.0, 250.0])  # e.g. conv outputs on 0-255 pixels
    rounded = logits + 1.2e-5
    assert _compare(actions, logits, actions, rounded, rule, activations)["passed"]
    assert not _compare(actions, logits, actions, rounded, rule)["passed"]  # small activations
    wrong = logits + 0.01  # same actions, but not rounding: 0.01 > 1e-5 * 300
    assert not _compare(actions, logits, actions, wrong, rule, activations)["passed"]
    swapped = actions[::-1].copy()
    assert not _compare(actions, logits, swapped, rounded, rule, activations)["passed"]


# -- Tune folders and Tuple actions --------------------------------------------------------


@pytest.fixture(scope="module")
def tune_experiment(ray_session, tmp_path_factory):
    """A real Tune run of PPO CartPole: 2 iterations, a checkpoint after each."""
    from ray import tune

    from tests.conftest import CONFIGS

    storage = tmp_path_factory.mktemp("tune")
    run_config = tune.RunConfig(
        storage_path=str(storage),
        name="exp",
        stop={"training_iteration": 2},
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1),
        verbose=0,
    )
    config = CONFIGS["ppo_cartpole"][2]()
    (result,) = tune.Tuner("PPO", param_space=config, run_config=run_config).fit()
    return storage / "exp", Path(result.path)


def test_a_trial_folder_is_named_as_such_with_the_checkpoint_to_pass(
    tune_experiment, tmp_path, capfd
):
    from rllib_mlflow.cli import main

    experiment, trial = tune_experiment
    latest = trial / "checkpoint_000001"
    assert latest.is_dir()
    with pytest.raises(CheckpointError) as info:
        export_checkpoint(trial, tmp_path / "out")
    message = str(info.value)
    assert "is a Tune trial folder, not a checkpoint" in message
    assert f"e.g. {latest} (the latest)" in message and "truncated" not in message
    with pytest.raises(CheckpointError, match=r"is a Tune experiment folder.*checkpoint_000001"):
        export_checkpoint(experiment, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (exported,) = export_checkpoint(latest, tmp_path / "out")  # the checkpoint itself exports
    assert exported.metadata["training_iteration"] == 2
    capfd.readouterr()
    assert main(["export", str(trial), "-o", str(tmp_path / "cli")]) != 0
    assert "is a Tune trial folder" in capfd.readouterr().err


def test_tuple_actions_are_refused_saying_what_to_do(trained_checkpoint, tmp_path):
    tc = trained_checkpoint("ppo_tuple_actions")
    with pytest.raises(UnsupportedModuleError) as info:
        export_checkpoint(tc.path, tmp_path / "out")
    message = str(info.value)
    assert "reading its action space failed. Tuple action spaces are not exported yet" in message
    assert "DistributionPartial" not in message and "Discrete" in message
    assert not (tmp_path / "out").exists()


# -- the parity check is RLlib's, not a copy of our rules (issue 35) -------------------------


def test_a_box_bounded_on_one_side_is_left_alone_as_rllib_leaves_it(case):
    """normalize_actions=True and clip_actions=True on [-0.2, 0.2] x R: RLlib's
    NormalizeAndClipActions only unsquashes, and leaves a not fully bounded Box alone, so
    the env receives actions past 0.2; the export once clipped them."""
    c = case("ppo_partly_bounded")
    assert np.max(np.abs(c.rllib_actions[:, 0])) > 0.2, "RLlib's actions must pass the bound"
    rule = c.policy_json["action_rule"]
    assert (rule["normalize_actions"], rule["clip_actions"]) == (False, False)


def test_parity_refuses_a_wrong_action_rule(case, tmp_path, monkeypatch):
    """A rule planted in the reader (clip where RLlib does not) must fail the parity check:
    its reference takes RLlib's actions from the checkpoint's own connector pipelines."""
    from rllib_mlflow.errors import ParityError
    from rllib_mlflow.rllib import connectors

    c = case("ppo_partly_bounded")
    monkeypatch.setattr(connectors, "_box_postprocessing", lambda space, settings: (False, True))
    (wrong,) = read_snapshots(c.tc.path)
    assert wrong.action_rule.clip_actions, "the planted rule is in the snapshot"
    with pytest.raises(ParityError, match="does not match RLlib"):
        export_checkpoint(c.tc.path, tmp_path / "wrong", formats=["onnx"])
