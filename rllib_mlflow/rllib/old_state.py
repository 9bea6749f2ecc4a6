"""An old-API-stack policy's state, whichever Ray 2.x wrote it, as plain data that this
Ray's `Policy.from_state` rebuilds with RLlib's own classes.

`policy_state.pkl` is read by `pickles.load`: its weights (torch: named arrays; TF2: a list
in variable order), its `policy_spec` (policy class by name, spaces in RLlib's serialized
form, the config) and its connectors' settings are plain data in every Ray 2.x release.
What is not (optimizer state, exploration state, callbacks, classes named in the config,
the StateBufferConnector's pickled episode states) is left out: inference needs none of it,
and each may be what an older Ray, or an attacker, left behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rllib_mlflow.errors import CheckpointError
from rllib_mlflow.rllib import pickles

# Connectors whose settings are a pickle of their own (RLlib cloudpickle.loads them).
_OPAQUE_CONNECTORS = {"StateBufferConnector"}


def read_policy_state(policy_dir: Path) -> dict[str, Any]:
    """The state of the policy checkpointed in `policy_dir`, for `Policy.from_state`."""
    path = policy_dir / "policy_state.pkl"
    state = pickles.load(path)
    spec = state.get("policy_spec") if isinstance(state, dict) else None
    if not isinstance(spec, dict) or "weights" not in state:
        raise CheckpointError(
            f"{path} holds no policy_spec and weights, as every old-API-stack policy "
            "checkpoint of Ray 2.x does. Pass the directory `algo.save()` or "
            "`policy.export_checkpoint()` wrote."
        )
    policy_class = policy_class_name(spec.get("policy_class"), path)
    return {
        "policy_spec": {
            "policy_class": policy_class,
            "observation_space": spec["observation_space"],
            "action_space": spec["action_space"],
            "config": _with_defaults(config_dict(spec.get("config") or {}), policy_class),
        },
        "weights": state["weights"],
        "global_timestep": int(state.get("global_timestep") or 0),
        "connector_configs": _connector_configs(state.get("connector_configs") or {}),
    }


def _with_defaults(config: dict[str, Any], policy_class: str) -> dict[str, Any]:
    """`config` over this Ray's old-stack defaults of its algorithm: settings added since
    the checkpoint's Ray (PPO's `use_kl_loss`, ...) get the value that keeps their old
    behaviour, as RLlib's own defaults do."""
    from ray.rllib.algorithms.registry import POLICIES
    from ray.tune.registry import get_trainable_cls

    algorithm = POLICIES.get(policy_class, "").split(".")[0].upper()
    try:
        defaults = get_trainable_cls(algorithm).get_default_config()  # pyright: ignore
        defaults = defaults.api_stack(
            enable_rl_module_and_learner=False, enable_env_runner_and_connector_v2=False
        ).to_dict()
    except Exception:  # not one of RLlib's algorithms: the checkpoint's config alone
        return config
    model = {**defaults.get("model", {}), **config.get("model", {})}
    return {**plain(defaults), **config, "model": model}


def policy_class_name(policy_class: Any, path: Path) -> str:
    """RLlib's durable name of the policy class (e.g. "PPOTorchPolicy"): recorded as a name
    since Ray 2.1, or as the class itself by some releases."""
    if isinstance(policy_class, str):
        return policy_class
    if pickles.is_stand_in(policy_class):
        # A class made at run time (the eager TF policies of `build_tf_policy`, DQN's
        # "DQNTFPolicy_eager_traced") is named without the eager suffixes: RLlib makes them
        # eager again for framework="tf2".
        name = pickles.class_name(policy_class).removesuffix("_traced")
        return name.removesuffix("_eager")
    raise CheckpointError(f"{path} names no policy class RLlib knows ({policy_class!r}).")


# AlgorithmConfig attributes -> the keys of its legacy config dict (RLlib's `to_dict`).
_CONFIG_KEYS = {
    "lambda_": "lambda",
    "input_": "input",
    "callbacks_class": "callbacks",
    "create_env_on_local_worker": "create_env_on_driver",
    "custom_evaluation_function": "custom_eval_function",
    "framework_str": "framework",
}


def config_dict(config: Any) -> dict[str, Any]:
    """An algorithm's config as RLlib's legacy dict, plain: Ray 2.3 to 2.9 pickled the
    AlgorithmConfig object itself (a StandIn here, its attributes in `state`), later
    releases its `to_dict()`."""
    if pickles.is_stand_in(config) and isinstance(config.state, dict):
        config = {
            _CONFIG_KEYS.get(key, key): value
            for key, value in config.state.items()
            if key not in ("algo_class", "_is_frozen")
        }
    if not isinstance(config, dict):
        return {}
    custom_model = (config.get("model") or {}).get("custom_model")
    config = plain(config)
    if pickles.is_stand_in(custom_model):  # named, so that it is refused, not dropped
        config["model"]["custom_model"] = pickles.stand_in_name(custom_model)
    return config


def plain(value: Any) -> Any:
    """`value` without what a StandIn replaced (a dict's entry, a list's item): RLlib's
    defaults take the place of the classes and functions an old config named."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if not pickles.is_stand_in(v)}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value if not pickles.is_stand_in(v))
    return value


def _connector_configs(configs: dict[str, Any]) -> dict[str, Any]:
    """The agent and action connector pipelines with plain settings only."""
    restored = {}
    for kind, pipeline in configs.items():
        name, connectors = pipeline
        restored[kind] = (name, [(c, _settings(c, params)) for c, params in connectors])
    return restored


def _settings(connector: str, params: Any) -> Any:
    if connector in _OPAQUE_CONNECTORS:
        return None
    if connector == "MeanStdObservationFilterAgentConnector" and isinstance(params, dict):
        params = params | {
            key: [_running_stat(s) for s in params.get(key) or []]
            for key in ("running_stats", "buffer")
        }
    return plain(params)


def _running_stat(state: dict[str, Any]) -> dict[str, Any]:
    """A RunningStat's state as Ray 2.10+ writes it. Before, Ray kept only the count, the
    mean and the sum of squared differences (named `std_array`), and no deltas."""
    if "std_array" not in state:
        return state
    from ray.rllib.utils.serialization import _deserialize_ndarray, _serialize_ndarray

    zeros = _serialize_ndarray(np.zeros_like(_deserialize_ndarray(state["mean_array"])))
    return {
        "num_pushes": state["num_pushes"],
        "num_pushes_delta": 0,
        "mean_array": state["mean_array"],
        "mean_delta_array": zeros,
        "sum_sq_diff_array": state["std_array"],
        "sum_sq_diff_delta_array": zeros,
    }
