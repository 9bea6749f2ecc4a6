"""LiteRT (`.tflite`, TensorFlow Lite's format) converted from the SavedModel we write.

`model.tflite` keeps float32 and is held to the same parity check as the other formats.
`model_int8.tflite` is full-integer post-training quantization (int8 weights and
activations, float32 at its inputs and outputs so that it is fed like the others),
calibrated on observations the policy meets in its own env; it cannot be exact, so
`export.agreement` measures how often it acts like RLlib instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rllib_mlflow import _tensorflow_first  # noqa: F401 - before Keras builds anything
from rllib_mlflow.envs import is_multi_agent, make_env, recorded
from rllib_mlflow.errors import UnsupportedModuleError
from rllib_mlflow.policy.serving import SAVED_MODEL_DIR, TFLITE_INT8_FILE
from rllib_mlflow.rllib.snapshot import PolicySnapshot

logger = logging.getLogger(__name__)

CALIBRATION_OBSERVATIONS = 500


def write_tflite(saved_model_dir: str, path: str) -> None:
    """The SavedModel's serving_default as a float32 LiteRT model."""
    Path(path).write_bytes(_convert(saved_model_dir, calibration=None))


def quantize(snapshot: PolicySnapshot, export_dir: str, act: Any) -> str:
    """Write `model_int8.tflite` from the SavedModel in `export_dir`, calibrated on
    observations of the checkpoint's env played by `act` (the SavedModel's runner); returns
    where those came from."""
    calibration, source = calibration_feeds(snapshot, act)
    saved_model = str(Path(export_dir, SAVED_MODEL_DIR))
    write_tflite_int8(saved_model, str(Path(export_dir, TFLITE_INT8_FILE)), calibration)
    return source


def write_tflite_int8(
    saved_model_dir: str, path: str, calibration: list[dict[str, np.ndarray]]
) -> None:
    """The SavedModel's serving_default, quantized to int8 with `calibration`: feeds of one
    observation each, named like the graph inputs."""
    Path(path).write_bytes(_convert(saved_model_dir, calibration=calibration))


def _convert(saved_model_dir: str, calibration: list[dict[str, np.ndarray]] | None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=["serving_default"]
    )
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: iter(calibration)
        # Integer kernels only: a float op left in the graph would defeat the point on an
        # integer-only accelerator. Inputs and outputs stay float32.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return converter.convert()
    except Exception as error:  # the converter raises its own ConverterError, and others
        first_line = next((line for line in str(error).splitlines() if line.strip()), "")
        raise UnsupportedModuleError(
            f"TFLiteConverter could not convert this policy's SavedModel "
            f"({type(error).__name__}: {first_line[:300]})."
        ) from error


def calibration_feeds(
    snapshot: PolicySnapshot, act: Any, count: int = CALIBRATION_OBSERVATIONS, seed: int = 0
) -> tuple[list[dict[str, np.ndarray]], str]:
    """`count` single-observation feeds to calibrate int8 ranges on (`met_observations`),
    and where they came from."""
    observations, source = met_observations(snapshot, act, count, seed)
    return list(_single_feeds(observations)), source


def met_observations(snapshot: PolicySnapshot, act: Any, count: int, seed: int) -> tuple[Any, str]:
    """`count` observations the policy meets, as the graphs take them, and where they came
    from: the checkpoint's own env played by `act` (feeds -> outputs, the float export)
    where the env can be made here, else samples of the observation space."""
    observations, source = env_observations(snapshot, act, count, seed)
    if observations is None:
        from rllib_mlflow.export.parity import sample_observations

        return sample_observations(snapshot, count, seed), "sampled from the observation space"
    return observations, source


def env_observations(
    snapshot: PolicySnapshot, act: Any, count: int, seed: int
) -> tuple[np.ndarray | None, str]:
    """Observations of episodes the export `act` plays in the snapshot's env (reset with
    `seed`, `seed + 1`, ...), or (None, why not) when that env cannot be played here."""
    make, config = recorded(snapshot.env, snapshot.env_id)
    if make is None or not _plays_plain_observations(snapshot):
        return None, "the policy's inputs are not one raw observation"
    try:  # as evaluate and the replays make it: a class, a registered name, a gymnasium id
        env = make_env(make, config)
    except Exception as error:  # e.g. a name registered in another process only
        return None, f"{make!r} cannot be made here ({type(error).__name__})"
    if is_multi_agent(env):  # its observations are per agent, of several modules
        env.close()
        return None, f"{make!r} is a multi-agent env"
    try:
        seen = []
        obs, _ = env.reset(seed=seed)
        episode = 0
        while len(seen) < count:
            batch = np.asarray(obs, np.float32).reshape(1, *snapshot.input_shape)
            seen.append(batch[0])
            action = np.asarray(act({"observations": batch})["actions"])[0]
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                episode += 1
                obs, _ = env.reset(seed=seed + episode)
    finally:
        env.close()
    return np.asarray(seen, np.float32), f"{make} episodes (reset seed {seed}...)"


def _plays_plain_observations(snapshot: PolicySnapshot) -> bool:
    return (
        snapshot.env_id is not None
        and snapshot.observation_inputs is None
        and not snapshot.flatten_observations
        and not snapshot.is_stateful
    )


def _single_feeds(observations: Any) -> Iterator[dict[str, np.ndarray]]:
    if isinstance(observations, dict):
        count = len(next(iter(observations.values())))
        for i in range(count):
            yield {key: value[i : i + 1] for key, value in observations.items()}
        return
    for i in range(len(observations)):
        yield {"observations": observations[i : i + 1]}
