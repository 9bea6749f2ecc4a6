"""What the env returns goes in, RLlib's own actions come out (issue 35): Discrete (Taxi-v3),
MultiDiscrete, Box (2, 3) and Dict-with-a-Tuple observations through `Policy` (both backends
for Taxi and the Box), `mlflow.pyfunc` and the real `mlflow models serve` (Taxi, the Box),
against the actions RLlib's restored EnvRunner sent the env on real episodes (explore=False).
A request in the wrong shape (or an empty one) gets a 400 naming the shape expected, and the
curl examples of docs/raw-observations.md run as written.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from tests import envs
from tests.mlflow_server import post_json, start_model_server

pytestmark = pytest.mark.slow

BOX_23 = "rllib_mlflow_tests/Box23-v0"
DOC = Path(__file__).resolve().parents[1] / "docs" / "raw-observations.md"
# kind -> env id; every one reaches the module through RLlib's FlattenObservations
ENVS = {
    "taxi": "Taxi-v3",
    "multidiscrete": envs.GRID_XY,
    "box": BOX_23,
    "nested": envs.NESTED_DICT,  # a Dict holding a Tuple holding a Dict
}
BOTH_BACKENDS = ("taxi", "box")  # the others export ONNX only: less time
STEPS = 300  # recorded env steps per policy


class Box23(gym.Env):
    """Box observations of shape (2, 3); action Discrete(3), rewarded when it names the
    column with the largest sum; 20 steps an episode."""

    def __init__(self, config: dict | None = None):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t, self._obs = 0, self.observation_space.sample()
        return self._obs, {}

    def step(self, action):
        reward = float(int(action) == int(np.argmax(self._obs.sum(axis=0))))
        self._t += 1
        self._obs = self.observation_space.sample()
        return self._obs, reward, False, self._t >= 20, {}


class Recorder(gym.Wrapper):
    """Keeps (observation, action the env received) for every step RLlib takes."""

    steps: list[tuple[Any, Any]] = []

    def reset(self, **kwargs):
        self._last, info = self.env.reset(**kwargs)
        return self._last, info

    def step(self, action):
        Recorder.steps.append((copy.deepcopy(self._last), np.array(action)))
        self._last, *rest = self.env.step(action)
        return (self._last, *rest)


@dataclass
class Trained:
    kind: str
    checkpoint: str
    export_dir: Path
    observations: Any  # raw, as the env returned them (a list of them for Dicts)
    actions: np.ndarray  # what RLlib's restored EnvRunner sent the env for them


def _train_and_record(kind: str, out: Path) -> Trained:
    """PPO (new stack, FlattenObservations) trained one iteration, saved, restored, then
    sampled with explore=False through a recording env."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.connectors.env_to_module import FlattenObservations
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env

    from rllib_mlflow.export import export_checkpoint

    if BOX_23 not in gym.registry:
        gym.register(id=BOX_23, entry_point=Box23)
    recording = f"recording-{kind}"
    register_env(recording, lambda config: Recorder(gym.make(ENVS[kind])))
    config = (
        PPOConfig()
        .environment(recording)
        .framework("torch")
        .env_runners(
            num_env_runners=0,
            env_to_module_connector=lambda env, spaces, device: FlattenObservations(),
        )
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[16, 16]))
        .debugging(seed=0, log_level="ERROR")
        .reporting(min_time_s_per_iteration=0)
    )
    algo = config.build_algo()
    try:
        algo.train()
        checkpoint = str(out / kind)
        algo.save(checkpoint)
        algo.restore_from_path(checkpoint)
        Recorder.steps = []
        algo.env_runner.sample(num_timesteps=STEPS, explore=False, random_actions=False)
        steps = list(Recorder.steps)
    finally:
        algo.stop()
    # Compared with the actions RLlib sent the env below, not with the parity check's reference.
    formats = ("onnx", "saved_model") if kind in BOTH_BACKENDS else ("onnx",)
    (exported,) = export_checkpoint(checkpoint, out / f"{kind}-export", formats, verify=False)
    observations = [obs for obs, _ in steps]
    if not isinstance(observations[0], dict):
        observations = np.stack(observations)
    return Trained(kind, checkpoint, exported.path, observations, np.stack([a for _, a in steps]))


@pytest.fixture(scope="session")
def trained(ray_session, tmp_path_factory) -> dict[str, Trained]:
    out = tmp_path_factory.mktemp("raw_observations")
    return {kind: _train_and_record(kind, out) for kind in ENVS}


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorflow"])
def test_policy_takes_what_the_env_returns(trained, backend):
    from rllib_mlflow.policy.serving import Policy

    taxi, box = trained["taxi"], trained["box"]
    assert taxi.observations.shape == (STEPS,) and box.observations.shape == (STEPS, 2, 3)
    policy = Policy(str(taxi.export_dir), backend=backend)
    values = taxi.observations
    one_hot = np.eye(500, dtype=np.float32)[values]
    for form in (values, values[:, None], values.astype(np.float64), values.tolist(), one_hot):
        np.testing.assert_array_equal(policy.compute_actions(form), taxi.actions)
    assert policy.compute_actions(int(values[0])).tolist() == [taxi.actions[0]]
    policy = Policy(str(box.export_dir), backend=backend)
    np.testing.assert_array_equal(policy.compute_actions(box.observations), box.actions)
    flat = box.observations.reshape(STEPS, 6)  # rows flattened by the client: still taken
    np.testing.assert_array_equal(policy.compute_actions(flat), box.actions)
    assert policy.compute_actions(box.observations[0]).tolist() == [box.actions[0]]


def test_policy_takes_multidiscrete_dict_and_tuple_observations(trained):
    from rllib_mlflow.policy.serving import Policy

    grid, nested = trained["multidiscrete"], trained["nested"]
    assert grid.observations.shape == (STEPS, 2)
    policy = Policy(str(grid.export_dir))
    np.testing.assert_array_equal(policy.compute_actions(grid.observations), grid.actions)
    policy = Policy(str(nested.export_dir))
    np.testing.assert_array_equal(policy.compute_actions(nested.observations), nested.actions)
    assert policy.compute_actions(nested.observations[0]).tolist() == [nested.actions[0]]


def test_policy_names_the_shape_it_expected(trained):
    from rllib_mlflow.policy.serving import Policy

    box = Policy(str(trained["box"].export_dir))
    with pytest.raises(ValueError, match=r"has shape \[4, 3, 2\]; expected shape \[N, 2, 3\]"):
        box.compute_actions(np.zeros((4, 3, 2)))
    taxi = Policy(str(trained["taxi"].export_dir))
    with pytest.raises(ValueError, match=r"has shape \[2, 2\]; expected shape \[N\] "):
        taxi.compute_actions([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"value 500 is not one of the integers .* \(0..499\)"):
        taxi.compute_actions([500])
    with pytest.raises(ValueError, match=r"value 2.5 is not one of the integers"):
        taxi.compute_actions([2.5])


@pytest.fixture(scope="session")
def models(trained, tmp_path_factory) -> dict[str, str]:
    """Each policy saved as an MLflow model (the flavor's save_model, as log_checkpoint does)."""
    from rllib_mlflow.mlflow.flavor import save_model

    out = tmp_path_factory.mktemp("raw_observation_models")
    for kind, policy in trained.items():
        save_model(policy.export_dir, out / kind)
    return {kind: str(out / kind) for kind in trained}


def test_signature_describes_the_raw_observation(models):
    from mlflow.models import Model

    specs = {}
    for kind, path in models.items():
        (spec,) = Model.load(path).get_input_schema().inputs
        specs[kind] = (str(spec.type), spec.shape)
    assert specs == {
        "taxi": ("int64", (-1,)),
        "multidiscrete": ("int64", (-1, 2)),
        "box": ("float32", (-1, 2, 3)),
        "nested": ("float32", (-1, 10)),  # no tensor holds a Tuple: RLlib's flattened rows
    }


def test_pyfunc_predict_takes_what_the_env_returns(trained, models):
    import mlflow

    for kind in ("taxi", "multidiscrete", "box"):
        model = mlflow.pyfunc.load_model(models[kind])
        np.testing.assert_array_equal(
            model.predict(trained[kind].observations), trained[kind].actions
        )
    nested = trained["nested"]
    model = mlflow.pyfunc.load_model(models["nested"])
    as_json = json.loads(json.dumps(nested.observations, default=lambda a: np.asarray(a).tolist()))
    np.testing.assert_array_equal(model.predict(as_json), nested.actions)  # a list of dicts
    columns = {key: [o[key] for o in as_json] for key in as_json[0]}
    np.testing.assert_array_equal(model.predict(columns), nested.actions)  # a batch per key
    taxi = mlflow.pyfunc.load_model(models["taxi"])
    values = trained["taxi"].observations
    np.testing.assert_array_equal(taxi.predict(values[:, None]), trained["taxi"].actions)
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"expected shape \[N\] "):
        taxi.predict(np.zeros((3, 2)))


@pytest.fixture(scope="session")
def served(models, tmp_path_factory):
    """`mlflow models serve` of the Taxi and the Box (2, 3) policies, started side by side."""
    from concurrent.futures import ThreadPoolExecutor

    def start(kind: str):
        log = tmp_path_factory.mktemp(f"serve-{kind}") / "serve.log"
        return start_model_server(models[kind], f"sqlite:///{log.parent / 'mlflow.db'}", log)

    with ThreadPoolExecutor(2) as pool:
        starts = {kind: pool.submit(start, kind) for kind in ("taxi", "box")}
    servers = {kind: f.result() for kind, f in starts.items() if f.exception() is None}
    try:
        for future in starts.values():
            future.result()  # a server that did not start fails the tests, after the other stops
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _predict(server, inputs: Any) -> np.ndarray:
    status, body = post_json(f"{server.uri}/invocations", {"inputs": inputs})
    assert status == 200, body
    return np.asarray(body["predictions"])


def test_served_model_takes_what_the_env_returns(trained, served):
    taxi, box = trained["taxi"], trained["box"]
    values = taxi.observations
    for form in (values.tolist(), values[:, None].tolist(), values.astype(float).tolist()):
        np.testing.assert_array_equal(_predict(served["taxi"], form), taxi.actions)
    one_hot = np.eye(500, dtype=int)[values[:20]].tolist()
    np.testing.assert_array_equal(_predict(served["taxi"], one_hot), taxi.actions[:20])
    np.testing.assert_array_equal(_predict(served["box"], box.observations.tolist()), box.actions)
    flat = box.observations[:20].reshape(20, 6).tolist()
    np.testing.assert_array_equal(_predict(served["box"], flat), box.actions[:20])


@pytest.mark.parametrize(
    "kind, inputs, message",
    [
        ("box", [[0.1, 0.2, 0.3, 0.4]], r"has shape \[1, 4\]; expected shape \[N, 2, 3\]"),
        ("box", [], r"The batch of observations is empty: send at least one; expected shape"),
        ("taxi", [[1, 2]], r"has shape \[1, 2\]; expected shape \[N\] \(a batch of Discrete"),
        ("taxi", [], r"is empty: send at least one; expected shape \[N\]"),
        ("taxi", [9000], r"value 9000 is not one of the integers RLlib one-hots \(0..499\)"),
    ],
    ids=["box-wrong-shape", "box-empty", "taxi-wrong-shape", "taxi-empty", "taxi-range"],
)
def test_a_wrong_request_gets_a_400_naming_what_was_expected(served, kind, inputs, message):
    status, body = post_json(f"{served[kind].uri}/invocations", {"inputs": inputs})
    assert status == 400, (status, body)
    assert re.search(message, body["message"]), body["message"]
    assert "enforce schema" not in body["message"]


def _doc_commands() -> list[tuple[str, int, str]]:
    """(curl command, status and message start the doc says it gets) for every curl in the
    doc's bash blocks; the line after each curl is `# <status>: <response>`."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    commands = []
    for line, comment in zip(lines, lines[1:]):
        if line.startswith("curl "):
            status, _, response = comment.removeprefix("# ").partition(": ")
            commands.append((line, int(status), response))
    return commands


def test_the_docs_curl_examples_run_as_written(served):
    ports = {"localhost:5001": served["taxi"].uri, "localhost:5002": served["box"].uri}
    commands = _doc_commands()
    assert len(commands) >= 6
    for command, status, response in commands:
        for port, uri in ports.items():
            command = command.replace(f"{port}/", f"{uri.removeprefix('http://')}/")
        run = subprocess.run(
            f"{command} -s -w '\\n%{{http_code}}'", shell=True, capture_output=True, text=True
        )
        body, _, code = run.stdout.rpartition("\n")
        assert int(code) == status, (command, run.stdout)
        answer = json.loads(body)
        if status == 200:
            assert np.asarray(answer["predictions"]).ndim >= 1
        else:  # the doc quotes the answer's code and message whole
            quoted = json.loads(response)
            assert {key: answer.get(key) for key in quoted} == quoted, (command, answer)


TUPLE = gym.spaces.Tuple(
    (
        gym.spaces.Discrete(3),
        gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
        gym.spaces.Dict(b=gym.spaces.MultiDiscrete([2, 3]), a=gym.spaces.Box(0.0, 1.0, (1,))),
    )
)


def test_tuple_observations_as_the_env_returns_them_or_as_json_lists():
    """A Tuple observation (a Dict inside) as the env returns it, one or a list, and as JSON
    sends it (lists): flattened as RLlib's own flatten_inputs_to_1d_tensor does."""
    import tree
    from ray.rllib.utils.numpy import flatten_inputs_to_1d_tensor
    from ray.rllib.utils.spaces.space_utils import get_base_struct_from_space

    from rllib_mlflow.policy.flatten import flat_size
    from rllib_mlflow.policy.observations import ObservationConverter
    from rllib_mlflow.policy.spaces import space_to_json

    space = space_to_json(TUPLE)
    width = flat_size(space)
    converter = ObservationConverter(
        {"observation_space": space, "inputs": [{"name": "observations", "shape": [None, width]}]}
    )
    TUPLE.seed(0)
    samples = [TUPLE.sample() for _ in range(5)]
    batch = tree.map_structure(lambda *parts: np.stack(parts), *samples)
    want = flatten_inputs_to_1d_tensor(batch, get_base_struct_from_space(TUPLE), batch_axis=True)
    np.testing.assert_array_equal(converter.feeds(samples)["observations"], want)
    np.testing.assert_array_equal(converter.feeds(samples[0])["observations"], want[:1])
    as_json = json.loads(json.dumps(tree.map_structure(lambda x: np.asarray(x).tolist(), samples)))
    np.testing.assert_array_equal(converter.feeds(as_json)["observations"], want)
    np.testing.assert_array_equal(converter.feeds(want)["observations"], want)  # flat rows
    with pytest.raises(ValueError, match="Observation 1 of the batch does not fit the Tuple"):
        converter.feeds([as_json[0], as_json[1][:2]])
