"""Run an exported policy with numpy and one inference backend: ONNX Runtime or TensorFlow.

This module is shipped inside every logged model (as `rllib_mlflow_serving.py`) and is
MLflow's pyfunc loader for it, so it must import nothing from Ray, torch or the rest of
rllib-mlflow: a served model then needs only mlflow, numpy and one backend.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

POLICY_FILE = "policy.json"
ONNX_FILE = "model.onnx"
SAVED_MODEL_DIR = "saved_model"
BACKENDS = ("onnxruntime", "tensorflow")


class Policy:
    """A trained policy loaded from an export directory: observations in, actions out.

    Stateless policies: `compute_actions(observations)`. Stateful ones (an LSTM, previous
    actions and rewards): `state = initial_state(n)`, then `actions, state = step(obs, state,
    prev_rewards=...)` once per environment step, `initial_state` again when an episode ends.
    """

    def __init__(self, export_dir: str, backend: str | None = None):
        with open(os.path.join(export_dir, POLICY_FILE)) as stream:
            self.metadata: dict[str, Any] = json.load(stream)
        self.backend = backend or _default_backend(export_dir)
        self._rule = self.metadata["action_rule"]
        self._observations = ObservationConverter(self.metadata)
        self._state_specs = self.metadata.get("state", [])
        self._history = self.metadata.get("history", [])
        outputs = self.metadata.get("output_names", ["actions", "action_dist_inputs"])
        self._run = _load_backend(self.backend, export_dir, outputs)

    @property
    def is_stateful(self) -> bool:
        """Whether actions depend on the past: use `initial_state` and `step`."""
        return bool(self.metadata.get("stateful", False))

    @property
    def state_names(self) -> list[str]:
        """The keys of a state dict: recurrent tensors, then the action/reward history."""
        return [spec["name"] for spec in self._state_specs + self._history]

    def compute_actions(
        self, observations: Any, explore: bool = False, seed: int | None = None
    ) -> np.ndarray:
        """Actions for a batch of raw observations; `explore` samples instead of argmax.

        Observations are an array (one observation or a batch), or for Dict observation
        spaces one dict, a list of dicts, or a dict of batched arrays."""
        if self.is_stateful:
            raise TypeError(
                "This policy is stateful (its actions depend on earlier steps), so "
                "compute_actions cannot answer for one observation alone. Use "
                "`state = policy.initial_state(batch_size)` and then, every step, "
                "`actions, state = policy.step(observations, state, prev_rewards=...)`."
            )
        outputs = self._run(self._observations.feeds(observations))
        return self._choose(outputs, explore, seed)

    def action_dist_inputs(self, observations: Any) -> np.ndarray:
        """The module's action distribution inputs (logits, or mean and log std)."""
        if self.is_stateful:
            raise TypeError("This policy is stateful: `step` returns its actions.")
        return self._run(self._observations.feeds(observations))["action_dist_inputs"]

    def initial_state(self, batch_size: int = 1) -> dict[str, np.ndarray]:
        """The state at the start of an episode, for `batch_size` parallel episodes."""
        if not self.is_stateful:
            raise TypeError("This policy is stateless: use compute_actions.")
        state = {
            spec["name"]: np.tile(np.asarray(spec["initial"], np.float32), (batch_size, 1))
            for spec in self._state_specs
        }
        for window in self._history:  # zeros: nothing happened before the episode
            state[window["name"]] = np.zeros((batch_size, window["width"]), np.float32)
        return state

    def step(
        self,
        observations: Any,
        state: dict[str, Any],
        prev_rewards: Any = None,
        explore: bool = False,
        seed: int | None = None,
        return_dist_inputs: bool = False,
    ):
        """One environment step of a stateful policy: (actions, next state).

        `prev_rewards` are the rewards the environment returned for the previous actions
        (zeros on an episode's first step); required when the policy reads past rewards
        (RLlib's PrevActionsPrevRewards connector). With `return_dist_inputs`, returns
        (actions, state, action_dist_inputs)."""
        if not self.is_stateful:
            raise TypeError("This policy is stateless: use compute_actions.")
        feeds = self._observations.feeds(observations)
        batch = next(iter(feeds.values())).shape[0]
        state = self._check_state(state, batch)
        for spec in self._state_specs:
            feeds[f"state_in_{spec['name']}"] = state[spec["name"]]
        for window in self._history:
            feeds[window["name"]] = state[window["name"]]
            if window["push"] == "reward":  # the reward the previous action earned
                rewards = self._check_rewards(prev_rewards, batch)[:, None]
                feeds[window["name"]] = _push(state[window["name"]], rewards)
        outputs = self._run(feeds)
        actions = self._choose(outputs, explore, seed)
        next_state = {s["name"]: outputs[f"state_out_{s['name']}"] for s in self._state_specs}
        for window in self._history:
            next_state[window["name"]] = _advance(window, feeds, actions)
        if return_dist_inputs:
            return actions, next_state, outputs["action_dist_inputs"]
        return actions, next_state

    def _choose(self, outputs: dict[str, np.ndarray], explore: bool, seed: int | None):
        if not explore:
            return outputs["actions"]
        if self.metadata.get("custom_distribution"):
            raise ValueError(
                f"explore=True samples RLlib's standard distributions; this policy acts with "
                f"{self.metadata['custom_distribution']}, which only its deterministic action "
                "is exported for. Use explore=False."
            )
        rng = np.random.default_rng(seed)
        return sample_actions(outputs["action_dist_inputs"], self._rule, rng)

    def _check_state(self, state: Any, batch: int) -> dict[str, np.ndarray]:
        if not isinstance(state, dict) or set(state) != set(self.state_names):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"state must be the dict that initial_state() or step() returned, with keys "
                f"{self.state_names}; got {got}."
            )
        widths = {s["name"]: s["shape"][1] for s in self._state_specs}
        widths.update({w["name"]: w["width"] for w in self._history})
        checked = {}
        for name, value in state.items():
            array = np.asarray(value, dtype=np.float32)
            if array.shape != (batch, widths[name]):
                raise ValueError(
                    f"state[{name!r}] has shape {list(array.shape)}; expected "
                    f"[{batch}, {widths[name]}] for a batch of {batch} observations (from "
                    f"initial_state({batch}))."
                )
            checked[name] = array
        return checked

    def _check_rewards(self, prev_rewards: Any, batch: int) -> np.ndarray:
        if prev_rewards is None:
            raise ValueError(
                "This policy reads the previous rewards (RLlib's PrevActionsPrevRewards "
                "connector): pass prev_rewards=, the rewards the environment returned for "
                "the previous actions (zeros on an episode's first step)."
            )
        rewards = np.asarray(prev_rewards, dtype=np.float32).reshape(-1)
        if rewards.shape != (batch,) or not np.all(np.isfinite(rewards)):
            raise ValueError(
                f"prev_rewards must be {batch} finite numbers (one per observation), got "
                f"{np.asarray(prev_rewards).tolist()!r}."
            )
        return rewards


def _advance(window: dict[str, Any], feeds: dict[str, np.ndarray], actions) -> np.ndarray:
    """A history window after the step: with the action taken or the observation seen
    (rewards entered before the step, as `feeds` holds them)."""
    current = feeds[window["name"]]
    if window["push"] == "action_one_hot":
        return _push(current, np.eye(window["item"], dtype=np.float32)[np.asarray(actions)])
    if window["push"] == "observation":
        observations = feeds["observations"]
        return _push(current, observations.reshape(observations.shape[0], -1))
    return current


def _push(window: np.ndarray, newest: np.ndarray) -> np.ndarray:
    """Drop the oldest entry of a history window and append `newest` (same width)."""
    if window.shape[1] == 0:
        return window
    return np.concatenate([window, newest], axis=1)[:, newest.shape[1] :].astype(np.float32)


class ObservationConverter:
    """Raw observations -> the named float32 arrays the exported graph takes.

    Box observations pass through. Dict observations come as one dict, a list of dicts or
    a dict of batched arrays; they are flattened as RLlib's FlattenObservations does
    (gymnasium.spaces.flatten: keys in order, Discrete one-hot; already flattened arrays
    are taken as they are) or, for a module that reads the dict itself, fed one graph input
    per key."""

    def __init__(self, metadata: dict[str, Any]):
        self.space = metadata["observation_space"]
        self.keys = metadata.get("observation_keys")
        inputs = metadata.get("inputs") or [
            {"name": "observations", "shape": metadata["input"]["shape"]}
        ]
        self.shapes = {i["name"]: tuple(i["shape"][1:]) for i in inputs}

    def feeds(self, observations: Any) -> dict[str, np.ndarray]:
        if self.space["type"] == "Dict" and (self.keys or _holds_dicts(observations)):
            columns = self._dict_columns(observations)
            if self.keys:
                return {key: self._batch(columns[key], key) for key in self.keys}
            rows = len(next(iter(columns.values())))
            flat = [
                flatten_observation(self.space, {k: v[i] for k, v in columns.items()})
                for i in range(rows)
            ]
            return {"observations": self._batch(flat, "observations")}
        return {"observations": self._batch(observations, "observations")}

    def _dict_columns(self, observations: Any) -> dict[str, list]:
        """One dict, a list of dicts or a dict of batched arrays -> {key: list of rows}."""
        keys = list(self.space["spaces"])
        if isinstance(observations, dict):
            missing = [k for k in keys if k not in observations]
            if missing:
                raise ValueError(f"Observation dict lacks key(s) {missing}; expected {keys}.")
            first = keys[0]
            single = np.ndim(observations[first]) == _rank(self.space["spaces"][first])
            if single:
                return {k: [observations[k]] for k in keys}
            return {k: list(observations[k]) for k in keys}
        if isinstance(observations, (list, tuple)) and observations:
            if all(isinstance(o, dict) for o in observations):
                return {k: [o[k] for o in observations] for k in keys}
        raise ValueError(
            f"Expected a Dict observation with keys {keys}: one dict, a non-empty list of "
            f"dicts, or a dict of batched arrays; got {type(observations).__name__}."
        )

    def _batch(self, observations: Any, name: str) -> np.ndarray:
        shape = self.shapes[name]
        try:
            batch = np.asarray(observations, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Observations must be numbers: {error}") from error
        if batch.shape == shape:
            batch = batch[None]
        if batch.shape[1:] != shape or batch.shape[0] == 0:
            raise ValueError(
                f"Expected a non-empty batch of {name} of shape {list(shape)}"
                f" (batch shape [N, {', '.join(map(str, shape))}]), got "
                f"{list(batch.shape)}."
            )
        if not np.all(np.isfinite(batch)):
            raise ValueError("Observations contain NaN or infinite values.")
        return batch


def _holds_dicts(observations: Any) -> bool:
    """A raw Dict observation, a list of them or a dict of batches (not flat arrays)."""
    if isinstance(observations, dict):
        return True
    return isinstance(observations, (list, tuple)) and any(
        isinstance(o, dict) for o in observations
    )


def _rank(space: dict[str, Any]) -> int:
    """The number of dimensions of one raw observation of `space`."""
    if space["type"] == "Box":
        return len(space["shape"])
    return 1 if space["type"] in ("MultiDiscrete", "MultiBinary") else 0


def flatten_observation(space: dict[str, Any], value: Any) -> np.ndarray:
    """gymnasium.spaces.flatten(space, value) for a space described as in policy.json."""
    kind = space["type"]
    if kind in ("Box", "MultiBinary"):
        return np.asarray(value, dtype=np.float32).ravel()
    if kind == "Discrete":
        one_hot = np.zeros(space["n"], np.float32)
        one_hot[int(value) - space.get("start", 0)] = 1.0
        return one_hot
    if kind == "MultiDiscrete":
        return np.concatenate(
            [np.eye(n, dtype=np.float32)[int(v)] for v, n in zip(np.ravel(value), space["nvec"])]
        )
    if kind == "Dict":
        return np.concatenate(
            [flatten_observation(sub, value[key]) for key, sub in space["spaces"].items()]
        )
    if kind == "Tuple":
        return np.concatenate(
            [flatten_observation(sub, part) for sub, part in zip(space["spaces"], value)]
        )
    raise ValueError(f"Cannot flatten observations of space type {kind!r}.")


def deterministic_actions(dist_inputs: np.ndarray, rule: dict[str, Any]) -> np.ndarray:
    """RLlib's action for explore=False, computed from action_dist_inputs with numpy."""
    kind, lens = rule["distribution"], rule["input_lens"]
    if kind == "categorical":
        return np.argmax(dist_inputs, axis=-1)
    if kind == "multi_categorical":
        parts = np.split(dist_inputs, np.cumsum(lens)[:-1], axis=-1)
        return np.stack([np.argmax(p, axis=-1) for p in parts], axis=-1)
    # Gaussians, squashed ones included: RLlib 2.60 acts with the (pre-tanh) mean.
    actions = dist_inputs[:, : lens[0]]
    return _postprocess(actions.astype(np.float32), rule)


def sample_actions(
    dist_inputs: np.ndarray, rule: dict[str, Any], rng: np.random.Generator
) -> np.ndarray:
    """RLlib's action for explore=True: a sample of the action distribution."""
    kind, lens = rule["distribution"], rule["input_lens"]
    if kind in ("categorical", "multi_categorical"):
        parts = np.split(dist_inputs, np.cumsum(lens)[:-1], axis=-1)
        picks = np.stack([_sample_categorical(p, rng) for p in parts], axis=-1)
        return picks[:, 0] if kind == "categorical" else picks
    mean, log_std = dist_inputs[:, : lens[0]], dist_inputs[:, lens[0] :]
    if kind == "squashed_gaussian":
        log_std = np.clip(log_std, -5.0, 2.0)  # RLlib's MIN/MAX_LOG_NN_OUTPUT
    sample = mean + np.exp(log_std) * rng.standard_normal(mean.shape)
    if kind == "squashed_gaussian":
        sample = np.clip(np.tanh(sample), -1.0, 1.0)
    return _postprocess(sample.astype(np.float32), rule)


def _sample_categorical(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Gumbel-max: argmax(logits + Gumbel noise) is a sample of softmax(logits).
    return np.argmax(logits - np.log(-np.log(rng.uniform(size=logits.shape))), axis=-1)


def _postprocess(actions: np.ndarray, rule: dict[str, Any]) -> np.ndarray:
    """RLlib's NormalizeAndClipActions: unsquash [-1, 1] to the bounds, or clip to them."""
    if not (rule["normalize_actions"] or rule["clip_actions"]):
        return actions
    low = np.asarray(rule["low"], dtype=np.float32)
    high = np.asarray(rule["high"], dtype=np.float32)
    if rule["normalize_actions"]:
        actions = low + (actions + 1.0) * (high - low) / 2.0
    return np.clip(actions, low, high)


def onnxruntime_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _default_backend(export_dir: str) -> str:
    if os.path.exists(os.path.join(export_dir, ONNX_FILE)) and onnxruntime_installed():
        return "onnxruntime"
    if os.path.isdir(os.path.join(export_dir, SAVED_MODEL_DIR)):
        return "tensorflow"
    raise RuntimeError(
        f"No usable model in {export_dir}: install onnxruntime (for {ONNX_FILE}) or "
        f"tensorflow (for {SAVED_MODEL_DIR}/)."
    )


def _load_backend(backend: str, export_dir: str, outputs: list[str]):
    """A function: {graph input name: batch} -> {graph output name: batch}."""
    if backend == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            os.path.join(export_dir, ONNX_FILE), providers=["CPUExecutionProvider"]
        )
        return lambda feeds: dict(zip(outputs, session.run(outputs, feeds)))
    if backend == "tensorflow":
        import tensorflow as tf

        serve = tf.saved_model.load(os.path.join(export_dir, SAVED_MODEL_DIR)).signatures[
            "serving_default"
        ]

        def run(feeds):
            out = serve(**{name: tf.constant(value) for name, value in feeds.items()})
            return {name: out[name].numpy() for name in outputs}

        return run
    raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}.")


# -- MLflow pyfunc ------------------------------------------------------------------------


class _PyfuncPolicy:
    """What `mlflow.pyfunc.load_model` returns for an rllib-mlflow model.

    A stateful policy takes its state as named tensors `state_<name>` (and `prev_rewards`
    when it reads past rewards) beside the observations, and returns `actions` with the
    next `state_<name>` tensors: send those back with the next observations."""

    def __init__(self, export_dir: str):
        self.policy = Policy(export_dir)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None):
        params = params or {}
        explore, seed = bool(params.get("explore", False)), params.get("seed")
        try:
            named = _named_inputs(model_input, self.policy)
            if self.policy.is_stateful:
                return self._step(named, explore, seed, bool(params.get("return_dist_inputs")))
            observations = _observations(named, self.policy)
            actions = self.policy.compute_actions(observations, explore=explore, seed=seed)
            if params.get("return_dist_inputs"):
                dist_inputs = self.policy.action_dist_inputs(observations)
                return {"actions": actions, "action_dist_inputs": dist_inputs}
            return actions
        except (TypeError, ValueError) as error:
            _raise_invalid_input(str(error))

    def _step(self, named: dict[str, Any], explore: bool, seed, return_dist_inputs: bool):
        state = {name: named.pop(f"state_{name}", None) for name in self.policy.state_names}
        missing = [f"state_{name}" for name, value in state.items() if value is None]
        if missing:
            raise ValueError(
                f"A stateful policy needs its state with every request: {missing} are missing "
                "(send zeros on an episode's first step, then the state_* of the last response)."
            )
        prev_rewards = named.pop("prev_rewards", None)
        observations = _observations(named, self.policy)
        actions, next_state, dist_inputs = self.policy.step(
            observations, state, prev_rewards, explore, seed, return_dist_inputs=True
        )
        response = {"actions": actions, **{f"state_{k}": v for k, v in next_state.items()}}
        if return_dist_inputs:
            response["action_dist_inputs"] = dist_inputs
        return response


def _named_inputs(model_input: Any, policy: Policy) -> dict[str, Any]:
    """MLflow's parsed request as {input name: batch}; an unnamed tensor is "observations"."""
    if hasattr(model_input, "to_numpy") and hasattr(model_input, "columns"):  # a DataFrame
        if not _has_named_inputs(policy.metadata):  # one row per flat observation
            return {"observations": model_input.to_numpy()}
        return {c: np.stack(model_input[c].to_numpy()) for c in model_input.columns}
    if isinstance(model_input, dict):
        return dict(model_input)
    return {"observations": model_input}


def _has_named_inputs(metadata: dict[str, Any]) -> bool:
    """Whether the served model takes named tensors (Dict keys, state) or one tensor."""
    return metadata.get("stateful", False) or served_observation_keys(metadata) is not None


def served_observation_keys(metadata: dict[str, Any]) -> list[str] | None:
    """The keys of a Dict observation the served model takes one tensor each for (a Dict
    of Box, Discrete, MultiDiscrete and MultiBinary parts), else None."""
    space = metadata["observation_space"]
    if space["type"] != "Dict":
        return None
    simple = ("Box", "Discrete", "MultiDiscrete", "MultiBinary")
    if not all(sub["type"] in simple for sub in space["spaces"].values()):
        return None
    return list(space["spaces"])


def _observations(named: dict[str, Any], policy: Policy) -> Any:
    """The raw observations within a request: one tensor, or one tensor per Dict key."""
    keys = served_observation_keys(policy.metadata)
    if keys is not None:
        missing = [k for k in keys if k not in named]
        if missing:
            raise ValueError(f"Observation input(s) {missing} are missing; send {keys}.")
        return {k: np.asarray(named.pop(k)) for k in keys}
    if len(named) != 1 or ("observations" not in named and len(named) > 1):
        raise ValueError(
            f"Send one tensor of observations (input name 'observations'); got inputs "
            f"{sorted(named)}."
        )
    return next(iter(named.values()))


def _raise_invalid_input(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _load_pyfunc(path: str) -> _PyfuncPolicy:
    """MLflow's pyfunc entry point: `path` is the model's data directory."""
    return _PyfuncPolicy(path)
