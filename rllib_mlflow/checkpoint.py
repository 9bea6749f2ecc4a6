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

import numpy as np

from rllib_mlflow.errors import CheckpointError, UnsupportedModuleError
from rllib_mlflow.snapshot import (
    ActionRule,
    Layer,
    MeanStdFilter,
    Network,
    PolicySnapshot,
)
from rllib_mlflow.spaces import space_to_json

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
) -> Callable[[np.ndarray], tuple[Any, np.ndarray]]:
    """RLlib's own inference path for `snapshot`: raw observations -> (actions, dist inputs).

    Uses the restored torch module, its inference action distribution, RLlib's
    MeanStdFilter and RLlib's unsquash/clip functions, exactly as an EnvRunner with
    explore=False does.
    """
    import torch
    from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

    module = restore_rl_module(snapshot)
    module.eval()
    rule = snapshot.action_rule
    dist_cls = module.get_inference_action_dist_cls()
    action_space = _gym_space(snapshot.action_space)
    obs_filter = _rllib_filter(snapshot.mean_std_filter)

    def act(observations: np.ndarray) -> tuple[Any, np.ndarray]:
        obs = np.asarray(observations, dtype=np.float32)
        if obs_filter is not None:
            obs = obs_filter(obs, update=False)
        with torch.no_grad():
            dist_inputs = _dist_inputs(module, torch.from_numpy(np.asarray(obs)))
            actions = dist_cls.from_logits(dist_inputs).to_deterministic().sample().numpy()
        if rule.normalize_actions:
            actions = np.stack([unsquash_action(a, action_space) for a in actions])
        elif rule.clip_actions:
            actions = np.stack([clip_action(a, action_space) for a in actions])
        return actions, dist_inputs.numpy()

    return act


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
    if module.is_stateful():
        raise UnsupportedModuleError(
            f"Module {module_id!r} ({type(module).__name__}) is stateful (an LSTM or "
            "attention net): no export format can represent its recurrent state yet. The "
            "RLlib checkpoint itself still works with `Algorithm.from_checkpoint`."
        )
    obs_space, act_space = module.observation_space, module.action_space
    flatten, connector_error = _check_env_to_module(algorithm["env_to_module"])
    if connector_error:
        raise UnsupportedModuleError(connector_error)
    network, reason = _network_or_reason(module)
    input_shape = _input_shape(obs_space, flatten)
    return PolicySnapshot(
        module_id=module_id,
        observation_space=space_to_json(_raw_observation_space(algorithm, flatten, obs_space)),
        action_space=space_to_json(act_space),
        input_shape=input_shape,
        flatten_observations=flatten,
        mean_std_filter=_mean_std_filter(algorithm, module_id, input_shape),
        network=network,
        unsupported_reason=reason,
        action_rule=_action_rule(module, act_space, algorithm["module_to_env"]),
        module_dir=str(module_dir.resolve()),
        module_class=f"{type(module).__module__}.{type(module).__name__}",
        algorithm=algorithm.get("algorithm"),
        env_id=algorithm.get("env_id"),
        source_checkpoint=source,
        training_iteration=algorithm.get("training_iteration"),
        metrics=dict(algorithm.get("metrics", {})),
        model_config=_jsonable(module.model_config),
    )


def _check_env_to_module(connectors: list[tuple[str, dict]]) -> tuple[bool, str | None]:
    """Whether observations are flattened, or why the pipeline cannot be exported."""
    names = [name for name, _ in connectors]
    unknown = [
        n
        for n in names
        if n not in _NEUTRAL_ENV_TO_MODULE | {"MeanStdFilter", "FlattenObservations"}
    ]
    if unknown:
        return False, (
            f"The env-to-module connector {unknown[0]} changes observations in a way "
            "rllib-mlflow cannot reproduce, so no export would receive the same inputs as "
            "the policy. Supported: MeanStdFilter, FlattenObservations. The RLlib "
            "checkpoint itself still works with `Algorithm.from_checkpoint`."
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
    import gymnasium as gym

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
    changed = flatten or "MeanStdFilter" in names
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


def _action_rule(module, act_space, module_to_env: list[tuple[str, dict]]) -> ActionRule:
    import gymnasium as gym

    dist_cls = module.get_inference_action_dist_cls()
    if isinstance(dist_cls, functools.partial):
        dist_cls = dist_cls.func
    # RLlib may hand out a generated subclass (a "DistributionPartial"): use its base.
    bases = getattr(dist_cls, "__mro__", ())
    name = next((_DISTRIBUTIONS[c.__name__] for c in bases if c.__name__ in _DISTRIBUTIONS), None)
    if name is None:
        raise UnsupportedModuleError(
            f"Action distribution {dist_cls!r} of {type(module).__name__} is not supported; "
            f"supported: {sorted(_DISTRIBUTIONS)}."
        )
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

    if isinstance(module, DefaultPPOTorchRLModule):
        encoder = module.encoder
        actor = encoder.encoder if hasattr(encoder, "encoder") else encoder.actor_encoder
        return Network(_layers(actor), _layers(module.pi), log_std_clip=_log_std_clip(module.pi))
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
    from rllib_mlflow.spaces import space_from_json

    return space_from_json(data)


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return {}
