"""Read an RLlib checkpoint into one `PolicySnapshot` per module.

`read_snapshots` restores each RLModule and gathers what the exporters need from the
checkpoint's files (`layout`), its connectors (`connectors`) and its network (`networks`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import gymnasium as gym

from rllib_mlflow.errors import CheckpointError, UnsupportedModuleError, module_refusal
from rllib_mlflow.policy.spaces import space_to_json
from rllib_mlflow.rllib.connectors import (
    _action_rule,
    _box_shape,
    _check_env_to_module,
    _dict_observation_inputs,
    _frame_stack,
    _input_shape,
    _mean_std_filter,
    _prev_actions_rewards,
    _raw_observation_space,
    missing_from_logits,
)
from rllib_mlflow.rllib.layout import (
    _module_dirs,
    _read_algorithm_info,
    _tensorflow_before_rllib,
    old_stack_policy_dirs,
    prepare_for_old_stack,
    written_by,
)
from rllib_mlflow.rllib.modules import restore_module
from rllib_mlflow.rllib.networks import _network_or_reason, _numpy, lstm_actor_encoder
from rllib_mlflow.rllib.old_stack import read_old_stack_snapshots
from rllib_mlflow.rllib.snapshot import Network, PolicySnapshot, StateTensor
from rllib_mlflow.rllib.uris import CheckpointLike, checkpoint_uri, local_checkpoint_dir


def read_snapshots(
    checkpoint: CheckpointLike, module_id: str | None = None
) -> list[PolicySnapshot]:
    """Read one snapshot per module (or only `module_id`) from an RLlib checkpoint."""
    local = Path(local_checkpoint_dir(checkpoint))
    old_policies = old_stack_policy_dirs(local)
    if old_policies is not None:
        prepare_for_old_stack()  # before TensorFlow is imported
    _tensorflow_before_rllib()
    modules = old_policies if old_policies is not None else _module_dirs(local)
    if module_id is not None:
        if module_id not in modules:
            raise CheckpointError(
                f"Module id {module_id!r} is not in checkpoint {local}; it holds "
                f"{sorted(modules)}. Pass one of those as module_id."
            )
        modules = {module_id: modules[module_id]}
    source = checkpoint_uri(checkpoint)
    if old_policies is not None:
        snapshots = read_old_stack_snapshots(local, modules, source)
    else:
        algorithm = _read_algorithm_info(local)
        snapshots = [
            _read_module(m, d, local, algorithm, source) for m, d in sorted(modules.items())
        ]
    writer = written_by(local)
    return [replace(s, written_by_ray=writer) for s in snapshots]


def _read_module(
    module_id: str, module_dir: Path, root: Path, algorithm: dict, source: str
) -> PolicySnapshot:
    module = restore_module(module_dir)
    obs_space, act_space = module.observation_space, module.action_space
    if obs_space is None or act_space is None:  # what RLlib's checkpoints always hold
        raise CheckpointError(f"Module {module_id!r} in {module_dir} has no spaces.")
    connectors = algorithm["env_to_module"]
    flatten, connector_error = _check_env_to_module(connectors)
    if connector_error:
        raise UnsupportedModuleError(connector_error)
    network, reason = _network_or_reason(module)
    raw_space = _raw_observation_space(algorithm, flatten, obs_space)
    prev = _prev_actions_rewards(connectors, act_space)
    frames = _frame_stack(connectors, raw_space)
    observation_inputs = None
    if prev is not None:  # the graph takes the raw observation and the history separately
        input_shape, flatten = _box_shape(raw_space, "PrevActionsPrevRewards"), False
    elif frames:  # `_frame_stack` checked that it is a Box
        input_shape = tuple(int(d) for d in cast(gym.spaces.Box, raw_space).shape)
    elif isinstance(obs_space, gym.spaces.Dict) and not flatten:
        observation_inputs, input_shape = _dict_observation_inputs(obs_space), ()
    else:
        input_shape = _input_shape(obs_space, flatten)
    if (prev is not None or frames) and "MeanStdFilter" in dict(connectors):
        raise UnsupportedModuleError(
            "MeanStdFilter together with PrevActionsPrevRewards or FrameStacking cannot be "
            "exported yet."
        )
    rule, custom_distribution = _module_action_rule(module, module_id, algorithm)
    return PolicySnapshot(
        module_id=module_id,
        observation_space=space_to_json(raw_space),
        action_space=space_to_json(act_space),
        input_shape=input_shape,
        flatten_observations=flatten,
        mean_std_filter=_mean_std_filter(algorithm, module_id, input_shape),
        network=network,
        unsupported_reason=reason,
        action_rule=rule,
        module_dir=str(module_dir.resolve()),
        module_class=f"{type(module).__module__}.{type(module).__name__}",
        env_runner_dir=algorithm.get("env_runner_dir"),
        algorithm=algorithm.get("algorithm"),
        env_id=algorithm.get("env_id"),
        env=algorithm.get("env"),
        source_checkpoint=source,
        training_iteration=algorithm.get("training_iteration"),
        metrics=dict(algorithm.get("metrics", {})),
        model_config=_jsonable(module.model_config),
        observation_inputs=observation_inputs,
        state=_state_tensors(module, network),
        prev_actions_rewards=prev,
        frame_stack=frames,
        custom_distribution=custom_distribution,
    )


def _module_action_rule(module, module_id: str, algorithm: dict):
    """`_action_rule`, its refusal (Tuple actions, ...) naming the module's class, and a
    module without an inference distribution refused in one line, not with RLlib's error."""
    cls = f"{type(module).__module__}.{type(module).__qualname__}"
    step = "reading its action distribution"
    try:
        reason = missing_from_logits(module)
        if reason is None:
            return _action_rule(module, module.action_space, algorithm["module_to_env"])
    except UnsupportedModuleError as error:
        message = module_refusal(cls, module_id, "reading its action space", "", str(error))
        raise UnsupportedModuleError(message) from error
    except Exception as error:  # e.g. NotImplementedError: no inference distribution
        todo = (
            "Its get_inference_action_dist_cls() must return the distribution its "
            "action_dist_inputs are meant for."
        )
        raise UnsupportedModuleError(module_refusal(cls, module_id, step, error, todo)) from error
    # RLlib cannot act with it: nothing to compare the export with.
    raise UnsupportedModuleError(module_refusal(cls, module_id, step, "", reason))


def _state_tensors(module, network: Network | None) -> tuple[StateTensor, ...]:
    """The recurrent state the exported graphs carry: for RLlib's default LSTM, the actor
    encoder's; for other stateful modules, every tensor of `get_initial_state()`."""
    if not module.is_stateful():
        return ()
    initial = (
        lstm_actor_encoder(module).get_initial_state()
        if network is not None and network.lstm
        else module.get_initial_state()
    )
    return tuple(
        StateTensor(name, tuple(int(d) for d in value.shape), _numpy(value).ravel())
        for name, value in flatten_state(initial).items()
    )


def flatten_state(state: dict, prefix: str = "") -> dict[str, Any]:
    """A nested state dict as {"actor_h": tensor, ...}; `unflatten_state` inverts it."""
    flat: dict[str, Any] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_state(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


def unflatten_state(flat: dict[str, Any], like: dict, prefix: str = "") -> dict:
    """`flat` back into the nesting of `like` (a module's initial state)."""
    return {
        key: unflatten_state(flat, value, f"{prefix}{key}_")
        if isinstance(value, dict)
        else flat[f"{prefix}{key}"]
        for key, value in like.items()
    }


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return {}
