"""Run an exported policy with numpy and one inference backend: ONNX Runtime, TensorFlow or
LiteRT.

This package is shipped inside every logged model (as `code/rllib_mlflow_policy/`), where
`pyfunc` is MLflow's loader, so it imports nothing from Ray, torch or the rest of
rllib-mlflow, and its modules import each other relatively: a served model then needs only
mlflow, numpy and one backend.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, Literal, cast, overload

import numpy as np

from .actions import sample_actions
from .observations import ObservationConverter

POLICY_FILE = "policy.json"
ONNX_FILE = "model.onnx"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
TFLITE_INT8_FILE = "model_int8.tflite"
BACKENDS = ("onnxruntime", "tensorflow", "litert", "litert_int8")
# The file (or folder) of an export each backend runs.
BACKEND_FILES = {
    "onnxruntime": ONNX_FILE,
    "tensorflow": SAVED_MODEL_DIR,
    "litert": TFLITE_FILE,
    "litert_int8": TFLITE_INT8_FILE,
}
# The export format (policy.json's `formats`) each backend runs.
BACKEND_FORMATS = {
    "onnxruntime": "onnx",
    "tensorflow": "saved_model",
    "litert": "tflite",
    "litert_int8": "tflite_int8",
}
# A loaded backend: {graph input name: batch} -> {graph output name: batch}.
Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
# What `Policy.step` returns: the actions and the next state (and the dist inputs, if asked).
Step = tuple[np.ndarray, dict[str, np.ndarray]]
StepWithDistInputs = tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]


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

        Observations are what the env returns, one or a batch: a Box in its own shape,
        Discrete values as ints ([N] or [N, 1]), MultiDiscrete values [N, len(nvec)], for
        Dict spaces one dict, a list of dicts or a dict of batched arrays, for Tuple spaces
        one tuple or a list of them. Rows already one-hot or flattened are taken too (see
        docs/raw-observations.md)."""
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
        for window in self._history:  # zeros (nothing happened before the episode), unless
            # the policy.json says what RLlib pads it with
            initial = window.get("initial") or np.zeros(window["width"])
            state[window["name"]] = np.tile(np.asarray(initial, np.float32), (batch_size, 1))
        return state

    @overload
    def step(
        self,
        observations: Any,
        state: dict[str, Any],
        prev_rewards: Any = None,
        explore: bool = False,
        seed: int | None = None,
        return_dist_inputs: Literal[False] = False,
    ) -> Step: ...

    @overload
    def step(
        self,
        observations: Any,
        state: dict[str, Any],
        prev_rewards: Any = None,
        explore: bool = False,
        seed: int | None = None,
        *,
        return_dist_inputs: Literal[True],
    ) -> StepWithDistInputs: ...

    def step(
        self,
        observations: Any,
        state: dict[str, Any],
        prev_rewards: Any = None,
        explore: bool = False,
        seed: int | None = None,
        return_dist_inputs: bool = False,
    ) -> Step | StepWithDistInputs:
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

    def _choose(
        self, outputs: dict[str, np.ndarray], explore: bool, seed: int | None
    ) -> np.ndarray:
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


def _load_backend(backend: str, export_dir: str, outputs: list[str]) -> Runner:
    """A function: {graph input name: batch} -> {graph output name: batch}."""
    if backend == "onnxruntime":
        session = onnx_session(os.path.join(export_dir, ONNX_FILE))

        def run_onnx(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            # Our graphs' outputs are tensors, which onnxruntime returns as arrays.
            return dict(zip(outputs, cast(list[np.ndarray], session.run(outputs, feeds))))

        return run_onnx
    if backend == "tensorflow":
        import tensorflow as tf

        serve = tf.saved_model.load(os.path.join(export_dir, SAVED_MODEL_DIR)).signatures[
            "serving_default"
        ]

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = serve(**{name: tf.constant(value) for name, value in feeds.items()})
            return {name: out[name].numpy() for name in outputs}

        return run
    if backend in ("litert", "litert_int8"):
        return litert_runner(os.path.join(export_dir, BACKEND_FILES[backend]), outputs)
    raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}.")


def litert_runner(path: str, outputs: list[str]) -> Runner:
    """A `.tflite` file run by the LiteRT interpreter (`ai-edge-litert`, no TensorFlow),
    with OMP_NUM_THREADS threads if set, as `onnx_session`."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ImportError(
            "backend='litert' needs the LiteRT interpreter: pip install 'rllib-mlflow[litert]' "
            "(or pip install ai-edge-litert)."
        ) from error
    threads = os.environ.get("OMP_NUM_THREADS", "")
    interpreter = Interpreter(
        model_path=path, num_threads=int(threads) if threads.isdigit() else None
    )
    signature = interpreter.get_signature_runner("serving_default")
    # A signature runner resizes its inputs to each batch and returns a dict of fresh arrays.
    return lambda feeds: {
        name: value for name, value in signature(**feeds).items() if name in outputs
    }


def onnx_session(path: str) -> Any:  # an onnxruntime.InferenceSession
    """An onnxruntime session on the CPU with OMP_NUM_THREADS threads, if set: onnxruntime
    ignores that variable, which torch and TensorFlow honour (the export worker sets it to
    1, to leave the cores to training). Unset, a thread per core (onnxruntime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    options.intra_op_num_threads = int(threads) if threads.isdigit() else 0
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
