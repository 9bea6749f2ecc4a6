"""What RLlib's connector pipelines do to observations and actions, as `PolicySnapshot` fields.

Env-to-module connectors that can be reproduced outside RLlib (MeanStdFilter,
FlattenObservations, PrevActionsPrevRewards, FrameStacking) become preprocessing
settings; any other value-changing connector makes the module unexportable. On the way
out, the action distribution and NormalizeAndClipActions become the `ActionRule`.
"""

from __future__ import annotations

import functools
from typing import cast

import gymnasium as gym
import numpy as np

from rllib_mlflow.errors import UnsupportedModuleError
from rllib_mlflow.rllib.snapshot import ActionRule, MeanStdFilter, PrevActionsRewards

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
    # Its action is the action_dist_inputs: what every distribution's to_deterministic()
    # gives RLlib, and a module's own inference distribution when subclassed (see below).
    "TorchDeterministic": "deterministic",
}


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


def _action_rule(
    module, act_space, module_to_env: list[tuple[str, dict]]
) -> tuple[ActionRule, str | None]:
    """How actions follow from action_dist_inputs, and the name of the distribution class
    when it is not one of RLlib's own (its deterministic sample is then traced)."""
    _refuse_composite_actions(act_space)
    dist_cls = module.get_inference_action_dist_cls()
    if isinstance(dist_cls, functools.partial):
        dist_cls = dist_cls.func
    # RLlib may hand out a generated subclass (a "DistributionPartial"): use its base.
    bases = cast("tuple[type, ...]", getattr(dist_cls, "__mro__", ()))
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


def missing_from_logits(module) -> str | None:
    """Why RLlib itself cannot act with `module`, if its inference distribution has no
    `from_logits` (Ray 2.60's TorchDeterministic: Distribution's raises NotImplementedError),
    which RLlib's EnvRunner calls (GetActions): then there is nothing to be equal to."""
    from ray.rllib.core.distribution.distribution import Distribution

    dist_cls = module.get_inference_action_dist_cls()
    dist_cls = getattr(dist_cls, "func", dist_cls)  # a functools.partial
    own = getattr(dist_cls, "from_logits", None)
    if getattr(own, "__func__", own) is not Distribution.from_logits.__func__:
        return None
    return (
        f"Its inference distribution {dist_cls.__name__} has no from_logits, so RLlib's own "
        f"EnvRunner cannot act with {type(module).__name__} either (NotImplementedError in "
        "GetActions). Give the distribution one (e.g. a subclass whose from_logits returns "
        "cls(loc=logits)) and train again."
    )


def _refuse_composite_actions(act_space) -> None:
    """Tuple and Dict actions (RLlib's TorchMultiDistribution) would need one output per
    part: refused before the distribution, whose generated class name says nothing."""
    for kind in (gym.spaces.Tuple, gym.spaces.Dict):
        if isinstance(act_space, kind):
            raise UnsupportedModuleError(
                f"{kind.__name__} action spaces are not exported yet (this module acts in "
                f"{act_space}). Exported action spaces: Discrete, MultiDiscrete and 1-D Box. "
                "To export this policy, train it with one of those (e.g. a Discrete part "
                "and a Box part as one Box, or several Discrete parts as a MultiDiscrete); "
                "the RLlib checkpoint itself still works with `Algorithm.from_checkpoint`."
            )


def _rule_for_space(name: str, act_space, module_to_env: list[tuple[str, dict]]) -> ActionRule:
    settings = dict(module_to_env).get("NormalizeAndClipActions", {})
    if name == "deterministic" and not isinstance(act_space, gym.spaces.Box):
        raise UnsupportedModuleError(
            f"TorchDeterministic acts in Box spaces (its actions are its inputs), not {act_space}."
        )
    if isinstance(act_space, gym.spaces.Discrete):
        return ActionRule(name, (int(act_space.n),))
    if isinstance(act_space, gym.spaces.MultiDiscrete):
        return ActionRule(name, tuple(int(n) for n in act_space.nvec), action_shape=act_space.shape)
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        size = int(act_space.shape[0])
        unsquash, clip = _box_postprocessing(act_space, settings)
        return ActionRule(
            name,
            (size,) if name == "deterministic" else (size, size),  # no log std
            normalize_actions=unsquash,
            clip_actions=clip,
            low=act_space.low.astype(np.float32),
            high=act_space.high.astype(np.float32),
            action_shape=act_space.shape,
        )
    raise UnsupportedModuleError(
        f"Action space {act_space} is not supported; supported: Discrete, MultiDiscrete "
        "and 1-D Box."
    )


def _box_postprocessing(act_space, settings: dict) -> tuple[bool, bool]:
    """(unsquash, clip) as RLlib's NormalizeAndClipActions does them: with normalize_actions
    it unsquashes (and clips) only a fully bounded float Box, and leaves any other Box
    alone, clip_actions or not (space_utils.unsquash_action); else clip_actions clips."""
    normalize = bool(settings.get("normalize_actions", False))
    clip = bool(settings.get("clip_actions", False))
    bounded = bool(np.all(act_space.bounded_below) and np.all(act_space.bounded_above))
    if normalize and bounded and act_space.dtype not in (np.float32, np.float64):
        raise UnsupportedModuleError(
            f"normalize_actions on the {act_space.dtype} action space {act_space} shifts "
            "actions by `low` (RLlib's unsquash of integer boxes); exporting it is not "
            "supported. Train with a float Box, or with normalize_actions=False."
        )
    return normalize and bounded, clip and not normalize
