"""Read RLlib checkpoints into `PolicySnapshot`s.

This is the only module that touches RLlib internals: the checkpoint layout, the
default RLModule classes, the connector pipelines and the action distributions. It also
provides RLlib's own inference path (`rllib_reference`) that parity checks compare
the exports against.

Layouts understood (Ray 2.60, new API stack):
    <algo>/learner_group/learner/rl_module/<module_id>/   an Algorithm checkpoint
    <rl_module>/<module_id>/                              a MultiRLModule checkpoint
    <module>/module_state.pkl                             a single RLModule checkpoint
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_mlflow.errors import CheckpointError, UnsupportedModuleError
from rllib_mlflow.policy.spaces import space_to_json
from rllib_mlflow.rllib.snapshot import (
    ActionRule,
    Layer,
    LSTMLayer,
    MeanStdFilter,
    Network,
    PolicySnapshot,
    PrevActionsRewards,
    StateTensor,
)

logger = logging.getLogger(__name__)

CheckpointLike = Any  # str | os.PathLike | ray.tune.Checkpoint

_MODULES_SUBDIR = Path("learner_group", "learner", "rl_module")
_CLASS_FILE = "class_and_ctor_args.pkl"
_STATE_FILE = "module_state.pkl"
# Env-to-module connectors that only batch and convert data, never change values.
_NEUTRAL_ENV_TO_MODULE = {
    "AddObservationsFromEpisodesToBatch",
    "AddTimeDimToBatchAndZeroPad",
    "AddStatesFromEpisodesToBatch",
    "AgentToModuleMapping",
    "BatchIndividualItems",
    "NumpyToTensor",
}
_DISTRIBUTIONS = {
    "TorchCategorical": "categorical",
    "TorchMultiCategorical": "multi_categorical",
    "TorchDiagGaussian": "diag_gaussian",
    "TorchSquashedGaussian": "squashed_gaussian",
}


def local_checkpoint_dir(checkpoint: CheckpointLike) -> str:
    """A local directory holding `checkpoint` (downloaded when it lives on S3 etc.)."""
    from ray.tune import Checkpoint

    if isinstance(checkpoint, Checkpoint):
        if checkpoint.filesystem.type_name == "local":
            return checkpoint.path
        return checkpoint.to_directory(tempfile.mkdtemp(prefix="rllib_mlflow_ckpt_"))
    text = os.fspath(checkpoint)
    if "://" in text and not text.startswith("file://"):
        try:
            remote = Checkpoint(text)
            return remote.to_directory(tempfile.mkdtemp(prefix="rllib_mlflow_ckpt_"))
        except Exception as error:
            raise CheckpointError(
                f"Cannot open checkpoint URI {text!r}: {error}{_credentials_hint(text)}"
            ) from error
    return text.removeprefix("file://")


def _credentials_hint(uri: str) -> str:
    """What to set when an s3:// checkpoint cannot be read and no AWS credentials are set."""
    if not uri.startswith("s3://"):
        return ""
    configured = (
        any(
            os.environ.get(name)
            for name in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")
        )
        or Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
        .expanduser()
        .exists()
    )
    if configured:
        return ""
    return (
        ". No AWS credentials are set: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and AWS_ENDPOINT_URL for a non-AWS store such as SeaweedFS or MinIO) in the "
        "environment of this process"
    )


def checkpoint_uri(checkpoint: CheckpointLike) -> str:
    """A URI that names `checkpoint` where it lives (s3://..., or an absolute path)."""
    from ray.tune import Checkpoint

    if isinstance(checkpoint, Checkpoint):
        if checkpoint.filesystem.type_name == "local":
            return str(Path(checkpoint.path).resolve())
        return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"
    text = os.fspath(checkpoint)
    return text if "://" in text else str(Path(text).resolve())


def _tensorflow_before_rllib() -> None:
    """Import TensorFlow before this process's first RLlib import (see `_tensorflow_first`).

    Called by the functions through which RLlib gets imported (by name or by unpickling),
    rather than at module import, so that the Tune driver, which only queues work, never
    loads TensorFlow."""
    from rllib_mlflow import _tensorflow_first  # noqa: F401


def list_module_ids(checkpoint_dir: str) -> list[str]:
    """The module ids a local checkpoint directory holds, in sorted order."""
    _tensorflow_before_rllib()
    return sorted(_module_dirs(Path(checkpoint_dir)))


def read_snapshots(
    checkpoint: CheckpointLike, module_id: str | None = None
) -> list[PolicySnapshot]:
    """Read one snapshot per module (or only `module_id`) from an RLlib checkpoint."""
    _tensorflow_before_rllib()
    local = Path(local_checkpoint_dir(checkpoint))
    modules = _module_dirs(local)
    if module_id is not None:
        if module_id not in modules:
            raise CheckpointError(
                f"Module id {module_id!r} is not in checkpoint {local}; it holds "
                f"{sorted(modules)}. Pass one of those as module_id."
            )
        modules = {module_id: modules[module_id]}
    algorithm = _read_algorithm_info(local)
    source = checkpoint_uri(checkpoint)
    return [
        _read_module(mid, mdir, local, algorithm, source) for mid, mdir in sorted(modules.items())
    ]


def read_training_iteration(checkpoint_dir: str) -> int | None:
    """The training iteration an Algorithm checkpoint recorded, if any."""
    _tensorflow_before_rllib()
    state = Path(checkpoint_dir) / "algorithm_state.pkl"
    if not state.exists():
        return None
    iteration = _load_pickle(state).get("training_iteration")
    return None if iteration is None else int(iteration)


def restore_rl_module(snapshot: PolicySnapshot):
    """RLlib's torch RLModule for `snapshot`, restored without starting Ray."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    return RLModule.from_checkpoint(str(Path(snapshot.module_dir).resolve()))


def rllib_reference(
    snapshot: PolicySnapshot,
) -> Callable[[Any], tuple[Any, np.ndarray]]:
    """RLlib's own inference path for `snapshot`: raw observations -> (actions, dist inputs).

    Uses the restored torch module, its inference action distribution, RLlib's
    MeanStdFilter and RLlib's unsquash/clip functions, exactly as an EnvRunner with
    explore=False does. Observations are one array, or a dict of arrays (one per key) for
    a module that reads Dict observations.
    """
    import torch

    module = restore_rl_module(snapshot)
    module.eval()
    obs_filter = _rllib_filter(snapshot.mean_std_filter)

    def act(observations: Any) -> tuple[Any, np.ndarray]:
        if isinstance(observations, dict):
            obs = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in observations.items()}
        else:
            obs = np.asarray(observations, dtype=np.float32)
            if obs_filter is not None:
                obs = obs_filter(obs, update=False)
            obs = torch.from_numpy(np.asarray(obs))
        with torch.no_grad():
            dist_inputs = _dist_inputs(module, obs)
            actions = _rllib_actions(module, snapshot, dist_inputs)
        return actions, dist_inputs.numpy()

    return act


def rllib_sequence_reference(
    snapshot: PolicySnapshot,
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """RLlib's own inference path for a stateful module over whole sequences.

    observations [T, B, ...] and rewards [T, B] (the reward each step's action earned) ->
    (actions [T, B, ...], dist inputs [T, B, ...]). The module's full state starts at
    `get_initial_state()` and is carried from step to step by `forward_inference`, as an
    EnvRunner does; PrevActionsPrevRewards' and FrameStacking's history starts as zeros.
    """
    import torch
    from ray.rllib.core.columns import Columns

    module = restore_rl_module(snapshot)
    module.eval()

    def run(observations: np.ndarray, rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        steps, batch = observations.shape[:2]
        state = _batched(module.get_initial_state(), batch)
        windows = _ReferenceWindows(snapshot, batch)
        all_actions, all_inputs = [], []
        for t in range(steps):
            obs = windows.module_observations(np.asarray(observations[t], np.float32))
            with torch.no_grad():
                batch_in = {Columns.OBS: torch.from_numpy(obs)}
                if snapshot.state:  # a recurrent module takes [batch, time=1, ...]
                    batch_in = {Columns.OBS: batch_in[Columns.OBS][:, None]}
                    batch_in[Columns.STATE_IN] = state
                out = module.forward_inference(batch_in)
                dist_inputs = out[Columns.ACTION_DIST_INPUTS]
                dist_inputs = dist_inputs[:, 0] if dist_inputs.dim() > 2 else dist_inputs
                actions = _rllib_actions(module, snapshot, dist_inputs)
            state = out.get(Columns.STATE_OUT, state)
            windows.advance(observations[t], actions, rewards[t])
            all_actions.append(actions)
            all_inputs.append(dist_inputs.numpy())
        return np.stack(all_actions), np.stack(all_inputs)

    return run


class _ReferenceWindows:
    """What RLlib's PrevActionsPrevRewards + FlattenObservations and FrameStacking
    connectors make of an episode's history, kept with plain numpy for the reference."""

    def __init__(self, snapshot: PolicySnapshot, batch: int):
        self.prev = snapshot.prev_actions_rewards
        self.frames = snapshot.frame_stack
        shape = (batch, *snapshot.input_shape)
        self.past_frames = [np.zeros(shape, np.float32)] * max(self.frames - 1, 0)
        if self.prev is not None:
            self.actions = np.zeros((batch, self.prev.n_prev_actions * self.prev.num_actions))
            self.rewards = np.zeros((batch, self.prev.n_prev_rewards))

    def module_observations(self, obs: np.ndarray) -> np.ndarray:
        if self.frames > 1:  # stacked on the last axis, the current frame last
            obs = np.concatenate([*self.past_frames, obs], axis=-1)
        if self.prev is not None:
            obs = np.concatenate([obs, self.actions, self.rewards], axis=-1)
        return obs.astype(np.float32)

    def advance(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        if self.frames > 1:
            self.past_frames = [*self.past_frames[1:], np.asarray(obs, np.float32)]
        if self.prev is not None:
            one_hot = np.eye(self.prev.num_actions)[actions]
            self.actions = np.concatenate([self.actions, one_hot], -1)[:, self.prev.num_actions :]
            self.rewards = np.concatenate([self.rewards, rewards[:, None]], -1)[:, 1:]


def _batched(state: dict, batch: int) -> dict:
    return {
        k: _batched(v, batch) if isinstance(v, dict) else v[None].repeat(batch, *[1] * v.dim())
        for k, v in state.items()
    }


def _rllib_actions(module, snapshot: PolicySnapshot, dist_inputs) -> np.ndarray:
    """The action an EnvRunner with explore=False sends, from the module's distribution
    inputs. The distribution gets a copy: custom ones may change their input in place."""
    from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

    dist_cls = module.get_inference_action_dist_cls()
    actions = dist_cls.from_logits(dist_inputs.clone()).to_deterministic().sample().numpy()
    rule = snapshot.action_rule
    action_space = _gym_space(snapshot.action_space)
    if rule.normalize_actions:
        actions = np.stack([unsquash_action(a, action_space) for a in actions])
    elif rule.clip_actions:
        actions = np.stack([clip_action(a, action_space) for a in actions])
    return actions


def module_dist_inputs(module, observations):
    """The module's action_dist_inputs for a torch batch of preprocessed observations,
    computed with operators `torch.onnx.export` can trace."""
    if getattr(module, "uses_dueling", False) and module.num_atoms == 1:
        # RLlib centers advantages with nanmean (for masked actions), which ONNX lacks;
        # without masking it equals mean.
        from ray.rllib.core.columns import Columns
        from ray.rllib.core.models.base import ENCODER_OUT

        features = module.encoder({Columns.OBS: observations})[ENCODER_OUT]
        advantages = module.af(features)
        return module.vf(features) + advantages - advantages.mean(dim=-1, keepdim=True)
    return _dist_inputs(module, observations)


# -- layout -------------------------------------------------------------------------------


def _module_dirs(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        raise CheckpointError(
            f"{root} is not a directory. Pass the directory that `algo.save()` or Tune "
            "wrote (e.g. .../checkpoint_000003), or a module directory inside it."
        )
    if (root / _CLASS_FILE).exists() and _is_single_module(root):
        return {_single_module_id(root): root}
    candidates = root / _MODULES_SUBDIR if (root / _MODULES_SUBDIR).is_dir() else root
    modules = {
        child.name: child
        for child in candidates.iterdir()
        if child.is_dir() and (child / _CLASS_FILE).exists()
    }
    if not modules:
        if (root / "learner_group").exists() or (root / "rllib_checkpoint.json").exists():
            raise CheckpointError(
                f"Checkpoint {root} is incomplete: no module under {_MODULES_SUBDIR}. It may "
                "have been truncated while copying; use another checkpoint of the run."
            )
        raise CheckpointError(
            f"{root} is not an RLlib checkpoint (no rllib_checkpoint.json, no "
            f"{_MODULES_SUBDIR}, no {_STATE_FILE}). Pass the directory that `algo.save()` "
            "or Tune wrote (e.g. .../checkpoint_000003)."
        )
    return modules


def _is_single_module(root: Path) -> bool:
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
    from ray.rllib.core.rl_module.rl_module import RLModule

    cls = _load_pickle(root / _CLASS_FILE)["class"]
    return issubclass(cls, RLModule) and not issubclass(cls, MultiRLModule)


def _single_module_id(root: Path) -> str:
    meta = root / "metadata.json"
    return (
        root.name if not meta.exists() else json.loads(meta.read_text()).get("module_id", root.name)
    )


def _load_pickle(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(
            f"Checkpoint file {path} is missing: the checkpoint is incomplete or truncated. "
            "Use another checkpoint of the run, or re-save it with `algo.save()`."
        )
    try:
        with path.open("rb") as stream:
            return pickle.load(stream)
    except (ModuleNotFoundError, AttributeError) as error:
        # The pickle is intact but refers to user code (an env, a policy_mapping_fn, a
        # custom module) that this process cannot import.
        raise CheckpointError(
            f"Checkpoint file {path} refers to code that cannot be imported here "
            f"({type(error).__name__}: {error}). Make the modules the checkpoint was trained "
            "with importable (install them or add them to PYTHONPATH) and try again."
        ) from error
    except Exception as error:
        raise CheckpointError(
            f"Checkpoint file {path} is corrupted or truncated ({type(error).__name__}: "
            f"{error}). Use another checkpoint of the run."
        ) from error


def _read_algorithm_info(root: Path) -> dict[str, Any]:
    """Algorithm name, env id, iteration, metrics and connectors, where recorded."""
    info: dict[str, Any] = {
        "env_to_module": [],
        "env_to_module_state": {},
        "module_to_env": [],
    }
    if (root / "rllib_checkpoint.json").exists() and (root / _CLASS_FILE).exists():
        algo = _load_pickle(root / _CLASS_FILE)
        info["algorithm"] = algo["class"].__name__
        config = algo["ctor_args_and_kwargs"][0][0] if algo["ctor_args_and_kwargs"][0] else {}
        env = config.get("env") if isinstance(config, dict) else None
        info["env_id"] = env if isinstance(env, str) else getattr(env, "__name__", None)
        state_path = root / "algorithm_state.pkl"
        if state_path.exists():
            state = _load_pickle(state_path)
            info["training_iteration"] = state.get("training_iteration")
            info["metrics"] = _metrics_from_logger_state(state.get("metrics_logger", {}))
    runner = root / "env_runner"
    for name in ("env_to_module", "module_to_env"):
        pipeline = runner / f"{name}_connector"
        if (pipeline / _CLASS_FILE).exists():
            args, kwargs = _load_pickle(pipeline / _CLASS_FILE)["ctor_args_and_kwargs"]
            info[name] = [(cls.__name__, kw) for cls, _, kw in kwargs["connectors"]]
            if name == "env_to_module" and args:
                info["env_observation_space"] = args[0]
            if name == "env_to_module":
                # Each connector with state keeps it in a sub-directory named after it.
                info["env_to_module_state"] = {
                    sub.name: _load_pickle(sub / "state.pkl")
                    for sub in pipeline.iterdir()
                    if (sub / "state.pkl").exists()
                }
    return info


def _metrics_from_logger_state(logger_state: dict[str, Any]) -> dict[str, float]:
    wanted = {
        "env_runners--episode_return_mean": "episode_return_mean",
        "env_runners--episode_len_mean": "episode_len_mean",
        "env_runners--num_env_steps_sampled_lifetime": "num_env_steps_sampled_lifetime",
    }
    metrics = {}
    for key, stat in logger_state.get("stats", {}).items():
        # A lifetime counter's "latest_merged" is the last iteration's increment; its
        # total (what Tune's result reports) is "lifetime_sum".
        latest = stat.get("lifetime_sum") if key.endswith("_lifetime") else None
        latest = stat.get("latest_merged") if latest is None else latest
        if key in wanted and latest is not None and np.size(latest):
            value = float(np.asarray(latest, dtype=np.float64).ravel()[-1])
            if np.isfinite(value):
                metrics[wanted[key]] = value
    return metrics


# -- one module ---------------------------------------------------------------------------


def _read_module(
    module_id: str, module_dir: Path, root: Path, algorithm: dict, source: str
) -> PolicySnapshot:
    _load_pickle(module_dir / _CLASS_FILE)  # clear errors for missing/corrupt files first
    _load_pickle(module_dir / _STATE_FILE)
    from ray.rllib.core.rl_module.rl_module import RLModule

    try:
        module = RLModule.from_checkpoint(str(module_dir.resolve()))
    except Exception as error:
        raise CheckpointError(
            f"RLlib could not restore module {module_id!r} from {module_dir} "
            f"({type(error).__name__}: {error}). The checkpoint may be truncated or written "
            "by another Ray version."
        ) from error
    obs_space, act_space = module.observation_space, module.action_space
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
    elif frames:
        input_shape = tuple(int(d) for d in raw_space.shape)
    elif isinstance(obs_space, gym.spaces.Dict) and not flatten:
        observation_inputs, input_shape = _dict_observation_inputs(obs_space), ()
    else:
        input_shape = _input_shape(obs_space, flatten)
    if (prev is not None or frames) and "MeanStdFilter" in dict(connectors):
        raise UnsupportedModuleError(
            "MeanStdFilter together with PrevActionsPrevRewards or FrameStacking cannot be "
            "exported yet."
        )
    rule, custom_distribution = _action_rule(module, act_space, algorithm["module_to_env"])
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
        algorithm=algorithm.get("algorithm"),
        env_id=algorithm.get("env_id"),
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


def lstm_actor_encoder(module):
    """The LSTM encoder that computes the actions of RLlib's default stateful PPO module."""
    encoder = module.encoder
    return encoder.encoder if hasattr(encoder, "encoder") else encoder.actor_encoder


def _prev_actions_rewards(connectors: list[tuple[str, dict]], act_space):
    settings = dict(connectors).get("PrevActionsPrevRewards")
    if settings is None:
        return None
    if not isinstance(act_space, gym.spaces.Discrete):
        raise UnsupportedModuleError(
            f"PrevActionsPrevRewards with {act_space} actions cannot be exported yet; "
            "Discrete actions are supported."
        )
    return PrevActionsRewards(
        n_prev_actions=int(settings.get("n_prev_actions", 1)),
        n_prev_rewards=int(settings.get("n_prev_rewards", 1)),
        num_actions=int(act_space.n),
    )


def _frame_stack(connectors: list[tuple[str, dict]], raw_space) -> int:
    """FrameStacking's number of frames (0 without it), for the single-agent [..., 1] Box
    observations it supports."""
    settings = dict(connectors).get("FrameStacking")
    if settings is None:
        return 0
    if settings.get("multi_agent"):
        raise UnsupportedModuleError("A multi-agent FrameStacking cannot be exported yet.")
    if not isinstance(raw_space, gym.spaces.Box) or raw_space.shape[-1:] != (1,):
        raise UnsupportedModuleError(f"FrameStacking on {raw_space} cannot be exported.")
    return int(settings.get("num_frames", 1))


def _box_shape(space, connector: str) -> tuple[int, ...]:
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise UnsupportedModuleError(
            f"{connector} on a {space} observation cannot be exported yet; a 1-D Box "
            "observation is supported."
        )
    return tuple(int(d) for d in space.shape)


def _dict_observation_inputs(space) -> dict[str, tuple[int, ...]]:
    """One graph input per key of a Dict observation the module reads as a dict."""
    parts = {}
    for key, sub in space.spaces.items():
        if not isinstance(sub, gym.spaces.Box) or not key.isidentifier():
            raise UnsupportedModuleError(
                f"The module reads Dict observations, and key {key!r} is {sub}: only Box "
                "parts with identifier keys can be graph inputs. If the module accepts "
                "flat observations, add RLlib's FlattenObservations connector."
            )
        parts[key] = tuple(int(d) for d in sub.shape)
    return parts


def _check_env_to_module(connectors: list[tuple[str, dict]]) -> tuple[bool, str | None]:
    """Whether observations are flattened, or why the pipeline cannot be exported."""
    names = [name for name, _ in connectors]
    supported = {"MeanStdFilter", "FlattenObservations", "PrevActionsPrevRewards", "FrameStacking"}
    unknown = [n for n in names if n not in _NEUTRAL_ENV_TO_MODULE | supported]
    if unknown:
        return False, (
            f"The env-to-module connector {unknown[0]} changes observations in a way "
            "rllib-mlflow cannot reproduce, so no export would receive the same inputs as "
            f"the policy. Supported: {', '.join(sorted(supported))}. The RLlib "
            "checkpoint itself still works with `Algorithm.from_checkpoint`."
        )
    if "PrevActionsPrevRewards" in names:
        settings = dict(connectors)["PrevActionsPrevRewards"]
        if settings.get("multi_agent") or names[names.index("PrevActionsPrevRewards") + 1 :][
            :1
        ] != ["FlattenObservations"]:
            return False, (
                "PrevActionsPrevRewards is exported when FlattenObservations follows it "
                "directly, in a single-agent pipeline; this pipeline is "
                f"{' -> '.join(names)}."
            )
    if dict(connectors).get("FlattenObservations", {}).get("keys_to_remove"):
        return False, (
            "FlattenObservations with keys_to_remove drops parts of the observation; "
            "exporting it is not supported yet."
        )
    if "MeanStdFilter" in names and "FlattenObservations" in names:
        if names.index("MeanStdFilter") < names.index("FlattenObservations"):
            return True, (
                "MeanStdFilter runs before FlattenObservations in this pipeline; only the "
                "order FlattenObservations -> MeanStdFilter can be exported."
            )
    return "FlattenObservations" in names, None


def _input_shape(obs_space, flatten: bool) -> tuple[int, ...]:
    if flatten:
        return (int(gym.spaces.flatdim(obs_space)),)
    if not isinstance(obs_space, gym.spaces.Box):
        raise UnsupportedModuleError(
            f"Observation space {obs_space} reaches the module unflattened; add RLlib's "
            "FlattenObservations connector to the env-to-module pipeline to export it."
        )
    return tuple(int(d) for d in obs_space.shape)


def _raw_observation_space(algorithm: dict, flatten: bool, module_space):
    # Connectors change the space the module sees: FlattenObservations makes it a flat Box,
    # MeanStdFilter a Box(-clip, clip). The raw space is the env's, which a single-agent
    # pipeline records as its input space.
    names = dict(algorithm["env_to_module"])
    multi_agent = "AgentToModuleMapping" in names
    changed = flatten or "MeanStdFilter" in names or "FrameStacking" in names
    env_space = algorithm.get("env_observation_space")
    return env_space if changed and env_space is not None and not multi_agent else module_space


def _mean_std_filter(algorithm: dict, module_id: str, input_shape) -> MeanStdFilter | None:
    kwargs = dict(algorithm["env_to_module"]).get("MeanStdFilter")
    if kwargs is None:
        return None
    state = algorithm["env_to_module_state"]
    filters = next((v for k, v in state.items() if "MeanStdFilter" in k), None)
    if not filters:
        raise UnsupportedModuleError(
            "The checkpoint has a MeanStdFilter connector but no filter statistics; "
            "it cannot be exported faithfully."
        )
    if kwargs.get("multi_agent"):
        raise UnsupportedModuleError(
            "A multi-agent MeanStdFilter keeps statistics per agent, not per module "
            f"({module_id!r}); exporting it is not supported yet."
        )
    from ray.rllib.utils.filter import RunningStat

    agent_state = next(iter(filters.values()))
    rllib_state = agent_state["running_stats"][0]
    stats = RunningStat.from_state(rllib_state)
    return MeanStdFilter(
        mean=np.asarray(stats.mean, dtype=np.float64).reshape(input_shape),
        std=np.asarray(stats.std, dtype=np.float64).reshape(input_shape),
        demean=agent_state["de_mean_to_zero"],
        destd=agent_state["de_std_to_one"],
        clip=agent_state["clip_by_value"],
        rllib_state=rllib_state,
    )


def _rllib_filter(spec: MeanStdFilter | None):
    """RLlib's own MeanStdFilter, restored from the checkpointed running statistics."""
    if spec is None:
        return None
    from ray.rllib.utils.filter import MeanStdFilter as RLlibMeanStdFilter
    from ray.rllib.utils.filter import RunningStat

    obs_filter = RLlibMeanStdFilter(
        spec.mean.shape, demean=spec.demean, destd=spec.destd, clip=spec.clip
    )
    obs_filter.running_stats = RunningStat.from_state(spec.rllib_state)
    return obs_filter


def _action_rule(
    module, act_space, module_to_env: list[tuple[str, dict]]
) -> tuple[ActionRule, str | None]:
    """How actions follow from action_dist_inputs, and the name of the distribution class
    when it is not one of RLlib's own (its deterministic sample is then traced)."""
    dist_cls = module.get_inference_action_dist_cls()
    if isinstance(dist_cls, functools.partial):
        dist_cls = dist_cls.func
    # RLlib may hand out a generated subclass (a "DistributionPartial"): use its base.
    bases = getattr(dist_cls, "__mro__", ())
    name = next((_DISTRIBUTIONS[c.__name__] for c in bases if c.__name__ in _DISTRIBUTIONS), None)
    if name is None:
        raise UnsupportedModuleError(
            f"Action distribution {dist_cls!r} of {type(module).__name__} is not supported; "
            f"supported: {sorted(_DISTRIBUTIONS)} and their subclasses."
        )
    rllib_own = next(c for c in bases if c.__name__ in _DISTRIBUTIONS)
    partial = "DistributionPartial" in dist_cls.__qualname__ and bases[1] is rllib_own
    standard = dist_cls is rllib_own or partial
    custom = None if standard else f"{dist_cls.__module__}.{dist_cls.__qualname__}"
    return _rule_for_space(name, act_space, module_to_env), custom


def _rule_for_space(name: str, act_space, module_to_env: list[tuple[str, dict]]) -> ActionRule:
    settings = dict(module_to_env).get("NormalizeAndClipActions", {})
    if isinstance(act_space, gym.spaces.Discrete):
        return ActionRule(name, (int(act_space.n),))
    if isinstance(act_space, gym.spaces.MultiDiscrete):
        return ActionRule(name, tuple(int(n) for n in act_space.nvec), action_shape=act_space.shape)
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        size = int(act_space.shape[0])
        return ActionRule(
            name,
            (size, size),
            # RLlib unsquashes only fully bounded boxes (space_utils.unsquash_action).
            normalize_actions=bool(settings.get("normalize_actions", False))
            and bool(np.all(act_space.bounded_below) and np.all(act_space.bounded_above)),
            clip_actions=bool(settings.get("clip_actions", False)),
            low=act_space.low.astype(np.float32),
            high=act_space.high.astype(np.float32),
            action_shape=act_space.shape,
        )
    raise UnsupportedModuleError(
        f"Action space {act_space} is not supported; supported: Discrete, MultiDiscrete "
        "and 1-D Box."
    )


def _dist_inputs(module, observations):
    from ray.rllib.core.columns import Columns

    batch = {Columns.OBS: observations}
    if hasattr(module, "uses_dueling"):  # DQN: its inference output holds only actions
        return module.compute_q_values(batch)["qf_preds"]
    return module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]


# -- network ------------------------------------------------------------------------------


def _network_or_reason(module) -> tuple[Network | None, str | None]:
    try:
        return _network(module), None
    except UnsupportedModuleError as error:
        return None, str(error)


def _network(module) -> Network:
    from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import (
        DefaultDQNTorchRLModule,
    )
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import (
        DefaultPPOTorchRLModule,
    )
    from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import (
        DefaultSACTorchRLModule,
    )

    defaults = (DefaultPPOTorchRLModule, DefaultSACTorchRLModule, DefaultDQNTorchRLModule)
    base = next((cls for cls in defaults if isinstance(module, cls)), None)
    if base is not None and _overrides_inference(type(module), base):
        raise UnsupportedModuleError(
            f"{type(module).__module__}.{type(module).__name__} changes the inference path "
            f"of RLlib's {base.__name__}, so it cannot be rebuilt in Keras; its graph is "
            "traced to ONNX instead."
        )
    if isinstance(module, DefaultPPOTorchRLModule):
        actor = lstm_actor_encoder(module)
        clip = _log_std_clip(module.pi)
        if hasattr(actor, "lstm"):
            return Network(
                _layers(actor.tokenizer), _layers(module.pi), log_std_clip=clip, lstm=_lstm(actor)
            )
        return Network(_layers(actor), _layers(module.pi), log_std_clip=clip)
    if isinstance(module, DefaultSACTorchRLModule):
        return Network(
            _layers(module.pi_encoder),
            _layers(module.pi),
            log_std_clip=_log_std_clip(module.pi),
        )
    if isinstance(module, DefaultDQNTorchRLModule):
        if module.num_atoms > 1:
            raise UnsupportedModuleError(
                f"Distributional DQN (num_atoms={module.num_atoms}) cannot be rebuilt in "
                "Keras yet; ONNX is still exported from the torch module."
            )
        if module.uses_dueling:
            return Network(_layers(module.encoder), _layers(module.af), _layers(module.vf))
        return Network(_layers(module.encoder), _layers(module.af))
    raise UnsupportedModuleError(
        f"{type(module).__module__}.{type(module).__name__} is not one of RLlib's default "
        "modules (PPO/APPO/IMPALA, DQN, SAC), so it cannot be rebuilt in Keras: the "
        "saved_model and h5 formats are unavailable. ONNX is still exported from the "
        "torch module."
    )


def _overrides_inference(cls, base) -> bool:
    """Whether `cls` (a subclass of one of RLlib's default modules) changes how it acts."""
    methods = ("_forward", "_forward_inference", "forward_inference", "compute_q_values")
    methods += ("get_inference_action_dist_cls",)
    return any(getattr(cls, m, None) is not getattr(base, m, None) for m in methods)


def _lstm(encoder) -> tuple[LSTMLayer, ...]:
    lstm = encoder.lstm
    if not lstm.batch_first or lstm.bidirectional or lstm.proj_size or not lstm.bias:
        raise UnsupportedModuleError(f"{lstm} cannot be rebuilt in Keras.")
    layers = []
    for i in range(lstm.num_layers):
        kernel = _numpy(getattr(lstm, f"weight_ih_l{i}")).T
        recurrent = _numpy(getattr(lstm, f"weight_hh_l{i}")).T
        bias = _numpy(getattr(lstm, f"bias_ih_l{i}")) + _numpy(getattr(lstm, f"bias_hh_l{i}"))
        layers.append(LSTMLayer(lstm.hidden_size, (kernel, recurrent, bias)))
    return tuple(layers)


def _log_std_clip(head) -> float | None:
    if getattr(head, "clip_log_std", False):
        return float(head.log_std_clip_param_const.item())
    return None


def _layers(torch_module) -> tuple[Layer, ...]:
    """Translate a torch module's leaf layers, in execution order, into `Layer`s."""
    import torch.nn as nn

    activations = {
        nn.Tanh: "tanh",
        nn.ReLU: "relu",
        nn.SiLU: "silu",
        nn.ELU: "elu",
        nn.Sigmoid: "sigmoid",
    }
    layers = []
    for leaf in torch_module.modules():
        if list(leaf.children()):
            continue
        if isinstance(leaf, nn.Linear):
            layers.append(Layer("dense", {"units": leaf.out_features}, _linear_weights(leaf)))
        elif isinstance(leaf, nn.Conv2d):
            layers.append(_conv_layer(leaf))
        elif isinstance(leaf, nn.ZeroPad2d):
            left, right, top, bottom = leaf.padding
            layers.append(
                Layer(
                    "pad2d",
                    {"top": top, "bottom": bottom, "left": left, "right": right},
                )
            )
        elif isinstance(leaf, nn.Flatten):
            layers.append(Layer("flatten"))
        elif isinstance(leaf, nn.LayerNorm):
            weights = (_numpy(leaf.weight), _numpy(leaf.bias))
            layers.append(Layer("layer_norm", {"epsilon": leaf.eps}, weights))
        elif type(leaf) in activations:
            layers.append(Layer("activation", {"name": activations[type(leaf)]}))
        elif isinstance(leaf, nn.Identity):
            continue
        else:
            raise UnsupportedModuleError(
                f"Layer {type(leaf).__module__}.{type(leaf).__name__} cannot be rebuilt in "
                "Keras: the saved_model and h5 formats are unavailable. ONNX is still "
                "exported from the torch module."
            )
    return tuple(layers)


def _numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float32)


def _linear_weights(linear) -> tuple[np.ndarray, ...]:
    kernel = _numpy(linear.weight).T
    bias = _numpy(linear.bias) if linear.bias is not None else np.zeros(kernel.shape[1], np.float32)
    return kernel, bias


def _conv_layer(conv) -> Layer:
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding not in ((0, 0), "valid"):
        raise UnsupportedModuleError(f"Conv2d {conv} cannot be rebuilt in Keras.")
    kernel = _numpy(conv.weight).transpose(2, 3, 1, 0)  # [out,in,h,w] -> [h,w,in,out]
    bias = _numpy(conv.bias) if conv.bias is not None else np.zeros(kernel.shape[3], np.float32)
    config = {
        "filters": conv.out_channels,
        "kernel": list(conv.kernel_size),
        "strides": list(conv.stride),
    }
    return Layer("conv2d", config, (kernel, bias))


def _gym_space(data: dict[str, Any]):
    from rllib_mlflow.policy.spaces import space_from_json

    return space_from_json(data)


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return {}
