"""Export every supported configuration and prove, in a process without Ray and torch, that
each format acts like RLlib on real episodes.

The reference episodes are played by RLlib itself: the algorithm is rebuilt from the
checkpoint's config and state (what `Algorithm.from_checkpoint` does), and its EnvRunner
samples with explore=False through the full connector pipelines (MeanStdFilter,
NormalizeAndClipActions, ...). A thin recording wrapper around the environment keeps each raw
observation and the action the environment actually received. The exports then get those
observations in a fresh process that cannot import ray or torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from rllib_mlflow.export import FORMATS, ExportedPolicy, export_checkpoint
from rllib_mlflow.policy.spaces import space_from_json
from rllib_mlflow.rllib.reader import read_snapshots
from rllib_mlflow.rllib.reference import rllib_reference
from tests import envs

pytestmark = pytest.mark.slow

SUPPORTED = [
    "ppo_cartpole",
    "ppo_cartpole_shared",
    "appo_cartpole",
    "impala_cartpole",
    "dqn_cartpole",
    "dqn_cartpole_plain",
    "sac_pendulum",
    "ppo_pendulum",
    "ppo_widebox",
    "ppo_widebox_clip",
    "ppo_multidiscrete",
    "ppo_image",
    "ppo_meanstd",
    "ppo_multiagent",
]
EXPECTED_DISTRIBUTION = {
    "sac_pendulum": "squashed_gaussian",
    "ppo_pendulum": "diag_gaussian",
    "ppo_widebox": "diag_gaussian",
    "ppo_widebox_clip": "diag_gaussian",
    "ppo_multidiscrete": "multi_categorical",
}
EPISODE_STEPS = 200  # environment steps RLlib plays per configuration
TOLERANCE = 1e-5
LOADER = Path(__file__).with_name("_no_ray_loader.py")


# -- RLlib playing real episodes ------------------------------------------------------------

# Recording environments live at module level so that Ray pickles them by reference and the
# EnvRunner (in this process: num_env_runners=0) appends to this very list.
RECORD: list[tuple[str, np.ndarray, np.ndarray]] = []


class RecordingEnv(gym.Wrapper):
    """Keeps (agent, raw observation, action received) for every step."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._last = obs
        return obs, info

    def step(self, action):
        RECORD.append(("agent0", np.array(self._last), np.array(action)))
        obs, *rest = self.env.step(action)
        self._last = obs
        return (obs, *rest)


class RecordingTwoAgentBalance(envs.TwoAgentBalance):
    def reset(self, **kwargs):
        obs, info = super().reset(**kwargs)
        self._last = dict(obs)
        return obs, info

    def step(self, action_dict):
        for agent, action in action_dict.items():
            RECORD.append((agent, np.array(self._last[agent]), np.array(action)))
        obs, *rest = super().step(action_dict)
        self._last.update(obs)
        return (obs, *rest)


def _recording_creator(env_id: str):
    if env_id == envs.MULTI_AGENT:
        return lambda config: RecordingTwoAgentBalance(config)
    return lambda config: RecordingEnv(envs.make_env(env_id))


def play_rllib_episodes(tc, steps: int = EPISODE_STEPS) -> dict[str, tuple[np.ndarray, Any]]:
    """module id -> (raw observations, actions the env received) from RLlib, explore=False."""
    from ray.tune.registry import register_env

    name = f"recording:{tc.env_id}"
    register_env(name, _recording_creator(tc.env_id))
    algo = tc.config.copy(copy_frozen=False).environment(name).build_algo()
    try:
        algo.restore_from_path(tc.path)
        runner = algo.env_runner
        for connector in runner._env_to_module.connectors:
            # The export is frozen at the checkpoint's statistics; keep RLlib's as well.
            if hasattr(connector, "_update_stats"):
                connector._update_stats = False
        RECORD.clear()
        runner.sample(num_timesteps=steps, explore=False, random_actions=False)
        records = list(RECORD)
    finally:
        algo.stop()
    by_module: dict[str, list] = {}
    for agent, obs, action in records:
        module_id = envs.policy_mapping_fn(agent) if tc.multi_agent else "default_policy"
        by_module.setdefault(module_id, []).append((obs, action))
    return {
        mid: (np.stack([o for o, _ in pairs]).astype(np.float32), np.stack([a for _, a in pairs]))
        for mid, pairs in by_module.items()
    }


# -- one export per configuration, shared by the tests of this module ----------------------


@dataclass
class ExportCase:
    tc: Any  # TrainedCheckpoint
    out: Path
    exported: list[ExportedPolicy] = field(default_factory=list)
    error: BaseException | None = None
    episodes: dict[str, tuple[np.ndarray, Any]] = field(default_factory=dict)

    def policy_dir(self, module_id: str) -> Path:
        return self.out if not self.tc.multi_agent else self.out / module_id

    def check(self) -> None:
        if self.error is not None:
            raise self.error


@pytest.fixture(scope="module")
def export_case(trained_checkpoint, tmp_path_factory):
    """Factory: config name -> ExportCase (exported once per module, all formats)."""
    root = tmp_path_factory.mktemp("exports")
    cache: dict[str, ExportCase] = {}

    def get(name: str) -> ExportCase:
        if name not in cache:
            tc = trained_checkpoint(name)
            case = ExportCase(tc, root / name)
            try:
                case.exported = export_checkpoint(tc.path, case.out)
                case.episodes = play_rllib_episodes(tc)
            except Exception as error:  # re-raised by each test of this config
                case.error = error
            cache[name] = case
        return cache[name]

    return get


@pytest.fixture(scope="module")
def no_ray_results(export_case, tmp_path_factory):
    """Run every export of every configuration in ONE fresh process without Ray/torch.

    Returns (summary printed by the loader, {key: npz results}) with key "<config>/<module>".
    """
    work = tmp_path_factory.mktemp("no_ray")
    jobs = []
    for name in SUPPORTED:
        case = export_case(name)
        if case.error is not None:
            continue
        for module_id, (obs, _) in case.episodes.items():
            key = f"{name}--{module_id}"
            np.save(work / f"{key}.npy", obs)
            jobs.append(
                {
                    "key": key,
                    "export_dir": str(case.policy_dir(module_id)),
                    "observations": str(work / f"{key}.npy"),
                }
            )
    (work / "manifest.json").write_text(json.dumps(jobs))
    results_dir = work / "results"
    results_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, str(LOADER), str(work / "manifest.json"), str(results_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"no-Ray loader failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    results = {job["key"]: dict(np.load(results_dir / f"{job['key']}.npz")) for job in jobs}
    return summary, results


def _assert_close(want, got, what: str) -> None:
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64).reshape(want.shape)
    bound = TOLERANCE * np.maximum(1.0, np.abs(want))
    worst = float(np.max(np.abs(want - got) - bound)) if want.size else 0.0
    assert np.all(np.abs(want - got) <= bound), f"{what}: off by {worst:.3g} beyond tolerance"


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SUPPORTED)
def test_export_layout_and_policy_json(export_case, name):
    case = export_case(name)
    case.check()
    tc = case.tc
    assert sorted(p.module_id for p in case.exported) == sorted(tc.module_ids)
    if tc.multi_agent:
        assert sorted(p.name for p in case.out.iterdir()) == sorted(tc.module_ids)
    env = tc.make_env()
    for policy in case.exported:
        directory = case.policy_dir(policy.module_id)
        assert policy.path == directory
        assert sorted(p.name for p in directory.iterdir()) == sorted(
            ["saved_model", "model.h5", "model.onnx", "policy.json"]
        )
        assert (directory / "saved_model" / "saved_model.pb").is_file()
        data = json.loads((directory / "policy.json").read_text())
        assert data == json.loads(json.dumps(policy.metadata))
        assert data["module_id"] == policy.module_id
        assert data["algorithm"] == tc.algo_name
        assert data["env_id"] == tc.env_id
        assert data["training_iteration"] == tc.training_iteration
        assert data["formats"] == list(FORMATS)
        assert Path(data["source_checkpoint"]) == Path(tc.path).resolve()
        assert {"ray", "torch", "tensorflow", "keras", "onnx"} <= set(data["library_versions"])

        agent = "a" + policy.module_id[-1] if tc.multi_agent else None
        obs_space = env.observation_spaces[agent] if agent else env.observation_space
        act_space = env.action_spaces[agent] if agent else env.action_space
        assert space_from_json(data["observation_space"]) == obs_space
        assert space_from_json(data["action_space"]) == act_space
        assert data["input"]["shape"] == [None, *obs_space.shape]

        rule = data["action_rule"]
        assert rule["distribution"] == EXPECTED_DISTRIBUTION.get(name, "categorical")
        if isinstance(act_space, gym.spaces.Box):
            assert rule["normalize_actions"] == bool(tc.config.normalize_actions)
            assert rule["clip_actions"] == bool(tc.config.clip_actions)
            np.testing.assert_array_equal(rule["low"], act_space.low)
            np.testing.assert_array_equal(rule["high"], act_space.high)

        if name == "ppo_meanstd":
            (step,) = data["preprocessing"]
            assert step["type"] == "mean_std_filter"
            assert len(step["mean"]) == len(step["std"]) == 4
            assert all(s > 0 for s in step["std"]) and any(m != 0 for m in step["mean"])
        else:
            assert data["preprocessing"] == []

        parity = data["parity"]
        assert parity["passed"] is True
        assert parity["observations"] >= 1000
        assert set(parity["formats"]) == set(FORMATS)
        assert all(r["passed"] and r["action_mismatches"] == 0 for r in parity["formats"].values())
        assert parity["max_abs_diff"] <= TOLERANCE


def test_no_ray_process_imports_neither_ray_nor_torch(no_ray_results):
    summary, results = no_ray_results
    assert summary["leaked"] == []
    assert len(results) == len(SUPPORTED) + 1  # the multi-agent checkpoint has two modules


@pytest.mark.parametrize("name", SUPPORTED)
def test_exports_act_like_rllib_on_real_episodes(export_case, no_ray_results, name):
    case = export_case(name)
    case.check()
    _, results = no_ray_results
    assert sorted(case.episodes) == sorted(case.tc.module_ids), "every module played"
    snapshots = {s.module_id: s for s in read_snapshots(case.tc.path)}
    for module_id, (observations, env_actions) in case.episodes.items():
        assert len(observations) >= 20
        got = results[f"{name}--{module_id}"]
        rule = snapshots[module_id].action_rule
        _, reference_inputs = rllib_reference(snapshots[module_id])(observations)
        sources = [*FORMATS, "policy-onnxruntime", "policy-tensorflow"]
        for source in sources:
            actions = got[f"{source}.actions"]
            assert len(actions) == len(observations)
            if rule.is_discrete:
                np.testing.assert_array_equal(
                    actions.reshape(env_actions.shape),
                    env_actions,
                    err_msg=f"{name}/{module_id}: {source} acts differently from RLlib",
                )
            else:
                _assert_close(env_actions, actions, f"{name}/{module_id} {source} actions")
            _assert_close(
                reference_inputs,
                got[f"{source}.action_dist_inputs"],
                f"{name}/{module_id} {source} action_dist_inputs",
            )


def test_onnx_only_writes_model_onnx_and_policy_json(trained_checkpoint, tmp_path):
    tc = trained_checkpoint("ppo_cartpole")
    (policy,) = export_checkpoint(tc.path, tmp_path / "out", formats=["onnx"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "policy.json"]
    data = json.loads((tmp_path / "out" / "policy.json").read_text())
    assert data["formats"] == ["onnx"] and data["files"] == {"onnx": "model.onnx"}
    assert list(data["parity"]["formats"]) == ["onnx"] and data["parity"]["passed"]
    assert policy.formats == ("onnx",)


def test_module_id_of_multi_agent_checkpoint_goes_directly_into_dir(trained_checkpoint, tmp_path):
    tc = trained_checkpoint("ppo_multiagent")
    out = tmp_path / "p1"
    (policy,) = export_checkpoint(tc.path, out, formats=["onnx", "h5"], module_id="p1")
    assert policy.module_id == "p1" and policy.path == out
    assert sorted(p.name for p in out.iterdir()) == ["model.h5", "model.onnx", "policy.json"]
    data = json.loads((out / "policy.json").read_text())
    assert data["module_id"] == "p1" and data["parity"]["passed"]
    assert data["training_iteration"] == tc.training_iteration


def test_export_from_tune_checkpoint_object(trained_checkpoint, tmp_path):
    from ray.tune import Checkpoint

    tc = trained_checkpoint("ppo_cartpole")
    (policy,) = export_checkpoint(Checkpoint.from_directory(tc.path), tmp_path, formats=["onnx"])
    assert policy.metadata["parity"]["passed"]
    assert policy.metadata["training_iteration"] == tc.training_iteration
    assert Path(policy.metadata["source_checkpoint"]) == Path(tc.path).resolve()
    assert (tmp_path / "model.onnx").is_file()


def test_export_from_single_module_directory(trained_checkpoint, tmp_path):
    tc = trained_checkpoint("ppo_cartpole")
    module_dir = Path(tc.path, "learner_group", "learner", "rl_module", "default_policy")
    (policy,) = export_checkpoint(module_dir, tmp_path, formats=["saved_model", "onnx"])
    assert policy.module_id == "default_policy"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.onnx",
        "policy.json",
        "saved_model",
    ]
    assert policy.metadata["parity"]["passed"]
    assert policy.metadata["action_rule"]["distribution"] == "categorical"


def test_existing_output_dir_is_refused_without_overwrite(trained_checkpoint, tmp_path):
    tc = trained_checkpoint("ppo_cartpole")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_checkpoint(tc.path, tmp_path, formats=["onnx"])
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]

    export_checkpoint(tc.path, tmp_path, formats=["onnx"], overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.onnx",
        "notes.txt",
        "policy.json",
    ]
