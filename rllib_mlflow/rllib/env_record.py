"""How the environment of a checkpoint is made, read from the algorithm's config as data.

What it records goes into policy.json (`env`) and onto the version (`env.make`,
`env.config`), so that `evaluate`, the replays and the int8 calibration make the same env
(`rllib_mlflow.envs.make_env`) with no flag:
- `make`: a gymnasium id as it is; an env class as ``module:QualName``; a name registered
  with `ray.tune.register_env`, the creator's ``module:function`` when it is a named
  function this process can see (training in this process), else the name itself;
- `config`: the `env_config`, JSON-safe, secrets masked (`redaction`);
- `modules` and `agent_to_module`: the multi-agent modules and, where the mapping is data
  (a dict, or RLlib's default that sends every agent to one module), the mapping. A mapping
  function is code: it is named (`mapping_fn`), never run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rllib_mlflow.envs import importable_path, tune_registered
from rllib_mlflow.redaction import redact
from rllib_mlflow.rllib import pickles

# RLlib's default mapping functions: every agent to DEFAULT_MODULE_ID.
_DEFAULT_MAPPINGS = ("DEFAULT_POLICY_MAPPING_FN", "DEFAULT_AGENT_TO_MODULE_MAPPING_FN")
DEFAULT_MODULE_ID = "default_policy"


def env_record(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `env` section of policy.json for an algorithm `config` (a dict of data, with
    StandIns for classes and functions), or None when the config names no env."""
    env = config.get("env")
    if env is None:
        return None
    name, make = _name_and_make(env)
    policies = config.get("policies")
    policies = policies if isinstance(policies, Mapping | list | tuple | set | frozenset) else ()
    mapping_fn = config.get("policy_mapping_fn")
    return {
        "id": name,
        "make": make,
        "config": json_safe(redact(_plain(config.get("env_config")))),
        "modules": sorted(str(m) for m in policies) or [DEFAULT_MODULE_ID],
        "agent_to_module": _agent_to_module(mapping_fn),
        "mapping_fn": _function_name(mapping_fn),
    }


def _plain(env_config: Any) -> dict[str, Any]:
    """The env_config as a dict: an EnvContext (a dict subclass) arrives as a StandIn that
    kept the pickle's items; anything else unreadable is no config."""
    if isinstance(env_config, Mapping):
        return dict(env_config)
    items = getattr(env_config, "items", None) if pickles.is_stand_in(env_config) else None
    return dict(items) if isinstance(items, dict) else {}


def _name_and_make(env: Any) -> tuple[str | None, str | None]:
    """(what the env is called, what `make_env` takes to make it again)."""
    if isinstance(env, str):
        return env, creator_path(env) or env
    path = getattr(env, "standin_import", None) if pickles.is_stand_in(env) else None
    path = path or importable_path(env)  # a real class: the old stack's configs may hold one
    if path is not None and "<" not in path and not path.startswith("__main__:"):
        return path, path
    # A class pickled by value (defined in __main__ or a notebook): only its name is known.
    return getattr(env, "__name__", None) or pickles.stand_in_name(env), None


def creator_path(env: Any) -> str | None:
    """``module:function`` of the creator `register_env` registered for the name `env` in
    this process, None for a lambda or a name it does not know. Tune's driver knows it where
    its export workers do not: the callback passes it on (`RegistrationTask.env_make`)."""
    creator = tune_registered(env) if isinstance(env, str) else None
    return None if creator is None else importable_path(creator)


def with_creator(record: dict[str, Any] | None, creator: str | None) -> dict[str, Any] | None:
    """`record` of an env known only by its registered name, made by `creator` instead."""
    if not record or not creator or record.get("make") != record.get("id"):
        return record
    return {**record, "make": creator}


def _agent_to_module(mapping_fn: Any) -> dict[str, str] | None:
    if isinstance(mapping_fn, Mapping):
        return {str(k): str(v) for k, v in mapping_fn.items()}
    name = _function_name(mapping_fn) or ""
    if name.rsplit(".", 1)[-1].rsplit(":", 1)[-1] in _DEFAULT_MAPPINGS:
        return {"*": DEFAULT_MODULE_ID}
    return None


def _function_name(value: Any) -> str | None:
    if value is None or isinstance(value, Mapping):
        return None
    return getattr(value, "standin_import", None) or importable_path(value)


def json_safe(value: Any) -> Any:
    """`value` as JSON can hold it: numpy values as numbers and lists, anything else that
    JSON has no type for (a space, a StandIn) as its repr."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)
