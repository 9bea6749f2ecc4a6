"""Read an RLlib old-API-stack checkpoint (TF2 or torch policies) into `PolicySnapshot`s.

An old-stack Algorithm checkpoint holds one `policies/<policy_id>/policy_state.pkl` per
policy; `policy.export_checkpoint` writes one such directory alone. Each policy is restored
with `Policy.from_checkpoint` (no Ray cluster needed) and becomes one snapshot: RLlib's
preprocessor (one-hot, Dict/Tuple flattening), the policy's MeanStdFilter connector frozen
at the checkpoint, the catalog model as a `Network`, and the action rule with the
config's `normalize_actions` / `clip_actions` (what `Algorithm.compute_single_action` does).

RLlib's TF2 policies are Keras 2 models: TensorFlow must start with TF_USE_LEGACY_KERAS=1
(and tf_keras installed); `layout.prepare_for_old_stack` arranges that where it still can.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_mlflow.errors import CheckpointError, UnsupportedModuleError
from rllib_mlflow.policy.spaces import space_to_json
from rllib_mlflow.rllib import pickles
from rllib_mlflow.rllib.connectors import _rule_for_space
from rllib_mlflow.rllib.env_record import env_record
from rllib_mlflow.rllib.layout import written_by
from rllib_mlflow.rllib.old_lstm import lstm_prev_actions_rewards, lstm_state
from rllib_mlflow.rllib.old_models import (
    distribution_name,
    old_stack_network,
    refuse_unsupported_model,
)
from rllib_mlflow.rllib.old_state import config_dict, read_policy_state
from rllib_mlflow.rllib.snapshot import MeanStdFilter, PolicySnapshot

OLD_STACK = "old"
LEGACY_KERAS_HINT = (
    "set TF_USE_LEGACY_KERAS=1 in the environment before TensorFlow (or RLlib) is imported, "
    "with tf-keras installed (`pip install --no-deps -r requirements-convert.txt`): RLlib's "
    "old-stack TF policies are Keras 2 models"
)


def read_old_stack_snapshots(
    root: Path, policy_dirs: dict[str, Path], source: str
) -> list[PolicySnapshot]:
    """One snapshot per policy directory of an old-stack checkpoint at `root`."""
    algorithm = _algorithm_info(root)
    return [_read_policy(pid, pdir, algorithm, source) for pid, pdir in sorted(policy_dirs.items())]


def restore_policy(policy_dir: str) -> Any:
    """RLlib's old-stack Policy rebuilt by this Ray from the checkpoint's plain data (see
    `old_state`), without Ray and without unpickling anything as code.

    Typed Any: RLlib's `Policy` declares neither `model` nor the config its subclasses
    (TorchPolicyV2, the eager TF policies) hold."""
    state = read_policy_state(Path(policy_dir))
    framework = state["policy_spec"]["config"].get("framework", "torch")
    if framework in ("tf", "tf2"):
        _check_legacy_keras(policy_dir)
    import ray
    from ray.rllib.policy.policy import Policy

    try:
        with quiet_tensorflow():
            return Policy.from_state(state)
    except Exception as error:
        writer = written_by(Path(policy_dir))
        raise CheckpointError(
            f"Ray {ray.__version__} could not rebuild the old-stack policy in {policy_dir}"
            f"{f' (written by Ray {writer})' if writer else ''} from its weights and "
            f"config ({type(error).__name__}: {error})."
        ) from error


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Silence tf_keras' warning that RLlib's free_log_std Lambda layer uses a variable it
    does not track (true, and harmless for inference), printed each time the model runs."""
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tf_logger.setLevel(level)


def _check_legacy_keras(policy_dir: str) -> None:
    if importlib.util.find_spec("tf_keras") is None:
        raise UnsupportedModuleError(
            f"The policy in {policy_dir} is an old-stack TensorFlow policy: {LEGACY_KERAS_HINT}."
        )
    import tensorflow as tf

    if not tf.keras.__name__.startswith("tf_keras"):
        raise UnsupportedModuleError(
            f"This process imported TensorFlow with Keras 3, which cannot restore the "
            f"old-stack TensorFlow policy in {policy_dir}: {LEGACY_KERAS_HINT}."
        )


def _algorithm_info(root: Path) -> dict[str, Any]:
    state_path = root / "algorithm_state.pkl"
    if not state_path.is_file():  # a Policy checkpoint
        return {}
    state = pickles.load(state_path)
    config = config_dict(state.get("config"))
    env = config.get("env")
    algo_class = state.get("algorithm_class")
    return {
        "algorithm": None if algo_class is None else pickles.class_name(algo_class),
        "env_id": env if isinstance(env, str) else getattr(env, "__name__", None),
        "env": env_record(config),
        "training_iteration": state.get("training_iteration"),
        "metrics": _counter_metrics(state.get("counters") or {}),
    }


def _counter_metrics(counters: dict[str, Any]) -> dict[str, float]:
    """What the old stack's state records of training (its counters; episode returns are
    only in Tune's results), named as the new stack's results name them."""
    wanted = {"num_env_steps_sampled": "num_env_steps_sampled_lifetime"}
    return {name: float(counters[key]) for key, name in wanted.items() if key in counters}


def _read_policy(policy_id: str, policy_dir: Path, algorithm: dict, source: str):
    trained_with = read_policy_state(policy_dir)["policy_spec"]["config"]
    if trained_with.get("framework") not in ("tf2", "torch"):
        raise UnsupportedModuleError(
            f"The old-stack policy {policy_id!r} uses framework="
            f"{trained_with.get('framework')!r}; policies of framework 'tf2' and 'torch' are "
            "exported (the graph-mode 'tf' policies are not)."
        )
    refuse_unsupported_model(trained_with.get("model", {}))  # before RLlib builds it
    policy = restore_policy(str(policy_dir))
    config = policy.config
    network = old_stack_network(policy)
    raw_space = getattr(policy.observation_space, "original_space", policy.observation_space)
    preprocessor = _preprocessor(policy)
    flatten = not isinstance(raw_space, gym.spaces.Box)
    input_shape = tuple(int(d) for d in preprocessor.shape)
    rule_settings = {
        "normalize_actions": bool(config.get("normalize_actions")),
        "clip_actions": bool(config.get("clip_actions")),
    }
    rule = _rule_for_space(
        distribution_name(policy),
        policy.action_space,
        [("NormalizeAndClipActions", rule_settings)],
    )
    model = policy.model
    return PolicySnapshot(
        module_id=policy_id,
        observation_space=space_to_json(raw_space),
        action_space=space_to_json(policy.action_space),
        input_shape=input_shape,
        flatten_observations=flatten,
        mean_std_filter=_mean_std_filter(policy, input_shape),
        network=network,
        unsupported_reason=None,
        action_rule=rule,
        module_dir=str(policy_dir.resolve()),
        module_class=f"{type(model).__module__}.{type(model).__name__}",
        algorithm=algorithm.get("algorithm"),
        env_id=algorithm.get("env_id") or _env_id(config),
        env=algorithm.get("env") or env_record(config),
        source_checkpoint=source,
        training_iteration=algorithm.get("training_iteration"),
        metrics=dict(algorithm.get("metrics", {})),
        model_config=_jsonable(config.get("model", {})),
        state=lstm_state(model) if network.lstm else (),
        prev_actions_rewards=lstm_prev_actions_rewards(config.get("model", {}), policy.action_space)
        if network.lstm
        else None,
        api_stack=OLD_STACK,
        framework="torch" if config.get("framework") == "torch" else "tf2",
    )


def _preprocessor(policy):
    """RLlib's observation preprocessor of the policy, if the exports can do what it does:
    none for a Box, one-hot for Discrete and MultiDiscrete (each part), gymnasium's flatten
    for Dict and Tuple spaces (Discrete parts one-hot)."""
    from ray.rllib.models.preprocessors import get_preprocessor

    raw = getattr(policy.observation_space, "original_space", policy.observation_space)
    preprocessor = get_preprocessor(raw)(raw, policy.config.get("model", {}))
    reason = _why_not_flatten(preprocessor)
    if reason:
        raise UnsupportedModuleError(
            f"RLlib's old-stack preprocessing of {raw} is not exported yet: {reason}."
        )
    return preprocessor


def _why_not_flatten(preprocessor) -> str | None:
    """None when `preprocessor` computes what the policy package's `flatten_observation`
    does (the exports' `flatten` step), else why not."""
    kind, space = type(preprocessor).__name__, preprocessor._obs_space
    if kind == "NoPreprocessor" and isinstance(space, gym.spaces.Box):
        return None
    if kind == "OneHotPreprocessor":
        # gymnasium's flatten, which RLlib calls, one-hots at value - start; RLlib's new
        # stack (and the exports) at the value itself.
        if np.any(np.asarray(space.start) != 0):
            return f"{space} starts at {space.start}, not 0"
        if np.ndim(getattr(space, "nvec", 0)) > 1:
            return f"{space} has a multi-dimensional nvec"
        return None
    if kind == "TupleFlatteningPreprocessor":
        parts = preprocessor.preprocessors
    elif kind == "DictFlatteningPreprocessor":
        keys = list(space.spaces)
        if keys != sorted(keys):
            # RLlib zips the observation's values, sorted by key, with the space's parts.
            return f"its keys {keys} are not in sorted order"
        parts = preprocessor.preprocessors
    else:
        return f"{kind} for {space}"
    return next((r for r in map(_why_not_flatten, parts) if r), None)


def _mean_std_filter(policy, input_shape) -> MeanStdFilter | None:
    """The policy's MeanStdFilter connector, as `Algorithm.compute_single_action` applies it
    (after the preprocessor, statistics not updated)."""
    from ray.rllib.connectors.agent.mean_std_filter import MeanStdObservationFilterAgentConnector

    connectors = policy.agent_connectors[MeanStdObservationFilterAgentConnector] or []
    if not connectors:
        if policy.config.get("observation_filter", "NoFilter") != "NoFilter":
            raise UnsupportedModuleError(
                f"observation_filter={policy.config['observation_filter']!r} is not exported "
                "yet; MeanStdFilter is."
            )
        return None
    rllib_filter = connectors[0].filter
    stats = rllib_filter.running_stats
    if not hasattr(stats, "to_state"):
        raise UnsupportedModuleError("A MeanStdFilter over nested observations is not exported.")
    return MeanStdFilter(
        mean=np.asarray(stats.mean, np.float64).reshape(input_shape),
        std=np.asarray(stats.std, np.float64).reshape(input_shape),
        demean=bool(rllib_filter.demean),
        destd=bool(rllib_filter.destd),
        clip=rllib_filter.clip,
        rllib_state=stats.to_state(),
    )


def _env_id(config: dict) -> str | None:
    env = config.get("env")
    return env if isinstance(env, str) else getattr(env, "__name__", None)


def _jsonable(value: Any) -> Any:
    import json

    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return {}
