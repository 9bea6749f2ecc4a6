"""Prove that every written export acts like RLlib's own policy.

RLlib's restored torch module between the EnvRunner's own connector pipelines
(`reference.rllib_batch_reference`) and each export, loaded back from disk, receive the same
observations sampled from the observation space: RLlib raw, as an env returns them. A
stateful policy plays sequences instead, its state (and previous actions and rewards)
carried from step to step on both sides (`reference.rllib_sequence_reference`). Dict
observations reach the exports raw too, through the policy package's ObservationConverter. Discrete
actions must be identical; continuous actions and action_dist_inputs must agree within the
tolerance, relative to the magnitudes float32 rounding grows with (TOLERANCE_RULE). A format
that fails is refused alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_mlflow.errors import ParityError
from rllib_mlflow.export.policy_file import observation_metadata
from rllib_mlflow.policy import serving
from rllib_mlflow.policy.actions import deterministic_actions
from rllib_mlflow.policy.observations import ObservationConverter
from rllib_mlflow.policy.spaces import space_from_json
from rllib_mlflow.rllib.reference import (
    rllib_batch_reference,
    rllib_flattened,
    rllib_sequence_reference,
)
from rllib_mlflow.rllib.snapshot import PolicySnapshot

TOLERANCE = 1e-5
TOLERANCE_RULE = (
    "discrete actions equal; |export - RLlib| <= tolerance * max(1, |RLlib's value|, the "
    "largest magnitude among the row's input and layer outputs) for action_dist_inputs and "
    "continuous actions (times the unsquashing's half-range)"
)
DEFAULT_OBSERVATIONS = 1000
SEQUENCES = 8  # parallel episodes a stateful policy's observations are split into

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def sample_observations(snapshot: PolicySnapshot, count: int, seed: int = 0) -> Any:
    """`count` observations from the snapshot's observation space as the graphs take them
    (a dict of batched arrays for a module that reads Dict observations; RLlib's own
    flattening for the observations RLlib flattens)."""
    samples = raw_observations(snapshot, count, seed)
    if snapshot.observation_inputs is not None:
        return {
            key: np.asarray([s[key] for s in samples], np.float32).reshape(count, *shape)
            for key, shape in snapshot.observation_inputs.items()
        }
    if snapshot.flatten_observations:
        samples = rllib_flattened(snapshot.observation_space, samples)
    return np.asarray(samples, dtype=np.float32).reshape(count, *snapshot.input_shape)


def raw_observations(snapshot: PolicySnapshot, count: int, seed: int) -> list:
    """The `count` raw observations `sample_observations` prepares for the graphs."""
    space = _finite_samples(space_from_json(snapshot.observation_space))
    space.seed(seed)
    return [space.sample() for _ in range(count)]


def _finite_samples(space: Any) -> Any:
    """`space` with bounds at float32's limit (how gymnasium before 1.0 wrote "unbounded",
    e.g. CartPole's velocities) as infinite: sampled uniformly there, they overflow to NaN
    in any network; gymnasium samples an unbounded side from a normal distribution."""
    if isinstance(space, gym.spaces.Box) and np.issubdtype(space.dtype, np.floating):
        huge = np.finfo(np.float32).max / 2
        low = np.where(space.low <= -huge, -np.inf, space.low)
        high = np.where(space.high >= huge, np.inf, space.high)
        dtype: Any = space.dtype  # gymnasium's stubs take a scalar type, not a dtype
        return gym.spaces.Box(low, high, space.shape, dtype)
    return space


def check_parity(
    snapshot: PolicySnapshot,
    export_dir: str,
    formats: list[str],
    observations: int = DEFAULT_OBSERVATIONS,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare each written format with RLlib. The report's "formats" are those that match,
    its "failed" those that do not (to be refused); ParityError when none matches."""
    compare = _compare_sequences if snapshot.is_stateful else _compare_batch
    results = compare(snapshot, export_dir, formats, observations, seed)
    report: dict[str, Any] = {
        "observations": observations,
        "seed": seed,
        "tolerance": TOLERANCE,
        "tolerance_rule": TOLERANCE_RULE,
        "reference": _REFERENCES[snapshot.api_stack],
        # The reference is rebuilt by this Ray from the checkpoint's weights and config,
        # whichever Ray wrote it (`written_by_ray` in policy.json).
        "reference_ray": _this_ray(),
        "formats": {f: r for f, r in results.items() if r["passed"]},
        "failed": {f: r for f, r in results.items() if not r["passed"]},
    }
    if snapshot.is_stateful:
        report["sequences"] = SEQUENCES
        report["reference"] += ", state carried through each sequence"
    report["max_abs_diff"] = max(
        (r["max_abs_diff"] for r in report["formats"].values()), default=0.0
    )
    report["passed"] = bool(report["formats"])
    if not report["passed"]:
        raise ParityError(
            f"Export of module {snapshot.module_id!r} does not match RLlib on {observations} "
            f"observations in any format: {report['failed']}. Nothing was written. Please "
            "report this with the checkpoint's algorithm and model config."
        )
    return report


def refusal(result: dict[str, Any], observations: int) -> str:
    """Why a format that failed the parity check is not written."""
    return (
        f"does not act like RLlib on the parity check's {observations} observations "
        f"({result['action_mismatches']} discrete actions differ; action_dist_inputs differ "
        f"by up to {result['max_abs_diff_action_dist_inputs']:.3g}, beyond {TOLERANCE:g} "
        "relative to the magnitude of the row's activations); the formats that pass are written"
    )


_REFERENCES = {
    "new": "RLlib torch module between the EnvRunner's connector pipelines restored from "
    "the checkpoint (explore=False)",
    "old": "RLlib old-stack Policy.compute_actions(explore=False) + its MeanStdFilter "
    "(update=False) + unsquash/clip, as Algorithm.compute_single_action",
}


def _compare_batch(snapshot, export_dir, formats, observations, seed) -> dict[str, Any]:
    raw, feeds = _raw_and_feeds(snapshot, observations, seed)
    want_actions, want_inputs, scale = rllib_batch_reference(snapshot, raw)
    results = {}
    for fmt in formats:
        out = format_runner(fmt, export_dir, snapshot)(feeds)
        results[fmt] = _compare(
            want_actions,
            want_inputs,
            out["actions"],
            out["action_dist_inputs"],
            snapshot.action_rule,
            scale,
        )
    return results


def _raw_and_feeds(snapshot: PolicySnapshot, count: int, seed: int):
    """Raw observations (what RLlib's env-to-module pipeline receives) and the exported
    graphs' feeds for the same observations.

    A Dict observation RLlib flattens reaches the graphs as users send it: raw dicts through
    the policy package's ObservationConverter (what Policy and the served model call), so
    that flattening it any other way than RLlib does fails parity."""
    raw = raw_observations(snapshot, count, seed)
    batch = sample_observations(snapshot, count, seed)
    converter = ObservationConverter(observation_metadata(snapshot))
    if isinstance(batch, dict):  # a module that reads the dict: one graph input per key
        return raw, converter.feeds(batch)
    raw_kinds = ("Dict", "Discrete", "MultiDiscrete")  # what the converter flattens
    if snapshot.flatten_observations and snapshot.observation_space["type"] in raw_kinds:
        return raw, converter.feeds(raw)
    return raw, {"observations": batch}


def _compare_sequences(snapshot, export_dir, formats, observations, seed) -> dict[str, Any]:
    steps = max(1, observations // SEQUENCES)
    flat = sample_observations(snapshot, steps * SEQUENCES, seed)
    sequences = flat.reshape(steps, SEQUENCES, *flat.shape[1:])
    raw = raw_observations(snapshot, steps * SEQUENCES, seed)
    raw_steps = [raw[t * SEQUENCES : (t + 1) * SEQUENCES] for t in range(steps)]
    rewards = np.random.default_rng(seed).normal(size=(steps, SEQUENCES)).astype(np.float32)
    want_actions, want_inputs = rllib_sequence_reference(snapshot)(raw_steps, rewards)
    results = {}
    for fmt in formats:
        run = format_runner(fmt, export_dir, snapshot)
        actions, inputs = _play(snapshot, run, sequences, rewards)
        results[fmt] = _compare(want_actions, want_inputs, actions, inputs, snapshot.action_rule)
    return results


def _play(snapshot: PolicySnapshot, run: Runner, sequences: np.ndarray, rewards: np.ndarray):
    """Run an export step by step, feeding back its state and history windows (the actions
    it chose, the observations it saw, and the rewards the reference was given)."""
    steps, batch = sequences.shape[:2]
    state = {
        f"state_in_{s.name}": np.tile(s.initial.astype(np.float32), (batch, 1))
        for s in snapshot.state
    }
    windows = snapshot.history()
    state.update({w.name: _initial_window(w, batch) for w in windows})
    all_actions, all_inputs = [], []
    for t in range(steps):
        out = run({"observations": sequences[t], **state})
        for s in snapshot.state:
            state[f"state_in_{s.name}"] = out[f"state_out_{s.name}"]
        for w in windows:
            newest = _newest(w, out["actions"], rewards[t], sequences[t])
            state[w.name] = _push(state[w.name], newest.astype(np.float32))
        all_actions.append(out["actions"])
        all_inputs.append(out["action_dist_inputs"])
    return np.stack(all_actions), np.stack(all_inputs)


def _initial_window(window, batch: int) -> np.ndarray:
    if window.initial is None:
        return np.zeros((batch, window.width), np.float32)
    return np.tile(np.asarray(window.initial, np.float32), (batch, 1))


def _newest(window, actions, rewards, observations) -> np.ndarray:
    """What enters a history window after this step."""
    if window.push == "action_one_hot":
        return np.eye(window.item)[actions]
    if window.push == "reward":
        return rewards[:, None]
    return observations.reshape(observations.shape[0], -1)


def _push(window: np.ndarray, newest: np.ndarray) -> np.ndarray:
    return np.concatenate([window, newest], axis=1)[:, newest.shape[1] :]


_FORMAT_BACKENDS = {
    "onnx": "onnxruntime",
    "saved_model": "tensorflow",
    "tflite": "litert",
    "tflite_int8": "litert_int8",
}


def format_runner(fmt: str, export_dir: str, snapshot: PolicySnapshot) -> Runner:
    """One written format as a function: {graph input: batch} -> {graph output: batch}."""
    outputs = snapshot.graph_outputs()
    if fmt in _FORMAT_BACKENDS:
        return serving._load_backend(_FORMAT_BACKENDS[fmt], export_dir, outputs)
    if fmt == "h5":
        return _h5_runner(os.path.join(export_dir, "model.h5"), snapshot)
    raise ValueError(f"Unknown format {fmt!r}.")


def _h5_runner(path: str, snapshot: PolicySnapshot) -> Runner:
    """The `.h5` holds the network alone: actions follow from the action rule."""
    model: Any  # a Keras model, of Keras 3 or tf_keras
    if snapshot.network is not None:
        import keras

        model = keras.models.load_model(path, safe_mode=True)
    else:
        import tf_keras  # onnx2tf writes tf_keras (Keras 2) files

        model = tf_keras.models.load_model(path)
    names = [name for name, _ in snapshot.graph_inputs()]
    state_names = [f"state_out_{s.name}" for s in snapshot.state]
    rule = snapshot.action_rule.to_json()

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = model([feeds[name] for name in names])
        out = [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else [np.asarray(out)]
        dist_inputs = out[0]
        return {
            "actions": deterministic_actions(dist_inputs, rule),
            "action_dist_inputs": dist_inputs,
            **dict(zip(state_names, out[1:])),
        }

    return run


def _compare(want_actions, want_inputs, actions, inputs, rule, scale=None) -> dict[str, Any]:
    """Discrete actions must be equal; distribution inputs and continuous actions within the
    tolerance, relative to each row's magnitude (`scale`: its largest activation)."""
    rows = np.shape(want_inputs)[0]
    scale = np.ones(rows) if scale is None else np.maximum(1.0, scale)
    input_diff = float(np.max(np.abs(want_inputs - inputs))) if want_inputs.size else 0.0
    want = np.asarray(want_actions).reshape(np.shape(actions))
    inputs_close = _close(want_inputs, inputs, scale)
    if rule.is_discrete:
        mismatches = int(np.sum(np.any(want != actions, axis=tuple(range(1, want.ndim)))))
        action_diff = float(mismatches)
        passed = mismatches == 0 and inputs_close
    else:
        mismatches = 0
        action_diff = float(np.max(np.abs(want - actions))) if want.size else 0.0
        passed = _close(want, actions, scale * _unsquash_gain(rule)) and inputs_close
    return {
        "max_abs_diff": max(input_diff, 0.0 if rule.is_discrete else action_diff),
        "max_abs_diff_action_dist_inputs": input_diff,
        "max_abs_diff_actions": action_diff if not rule.is_discrete else 0.0,
        "action_mismatches": mismatches,
        "passed": bool(passed),
    }


def _unsquash_gain(rule) -> float:
    """How much unsquashing to the Box bounds magnifies a difference in the means."""
    if not rule.normalize_actions:
        return 1.0
    return float(max(1.0, np.max((np.asarray(rule.high) - np.asarray(rule.low)) / 2.0)))


def _close(want: np.ndarray, got: np.ndarray, scale: np.ndarray) -> bool:
    # float32 keeps ~7 digits of the largest number a row's computation goes through.
    row_scale = np.reshape(scale, (-1,) + (1,) * (np.ndim(want) - 1))
    bound = TOLERANCE * np.maximum(row_scale, np.abs(want))
    return bool(np.all(np.abs(want - got) <= bound))


def _this_ray() -> str:
    import ray

    return ray.__version__
