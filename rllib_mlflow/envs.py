"""Make the environment a policy was trained in, the same way everywhere: `evaluate`, the
replays and the int8 calibration all call `make_env`.

`env` is what a version records (policy.json's `env.make`, the `env.make` tag) or what the
user passes, tried in this order:
- a callable (an env class or a factory), called with `env_config` as RLlib calls it;
- ``"module:callable"``, imported, then called the same way;
- a name registered with Ray Tune's `register_env` in this process: looked up only when Ray
  is already imported (the training process), never importing Ray for it;
- a gymnasium id, made with ``gym.make(id, **env_config)`` as RLlib makes one.
A PettingZoo env comes back wrapped in RLlib's PettingZoo wrapper, so that multi-agent envs
have one interface (RLlib's MultiAgentEnv). What cannot be made raises `EnvCreationError`
in one line: what was tried and what to pass (gymnasium's NameNotFound alone says neither).

Standard library at import time; gymnasium (and Ray, for PettingZoo) only when called.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

from rllib_mlflow.errors import EnvCreationError
from rllib_mlflow.redaction import MASK

# A gymnasium id, "module:callable", a Tune-registered name, or the class/factory itself.
EnvLike = str | Callable[..., Any]
_TODO = (
    "Pass --env module:callable (an env class or a factory taking env_config; "
    "--env-config JSON for its config), or env= in Python"
)


def make_env(
    env: EnvLike, env_config: Mapping[str, Any] | None = None, *, render_mode: str | None = None
) -> Any:
    """The environment `env` names, made with `env_config`; with `render_mode`, asked to
    render that way (a custom env that does not take it keeps its own mode)."""
    config = dict(env_config or {})
    creator = _creator(env)
    if creator is None:  # only gymnasium can know this name
        return _gymnasium(str(env), config, render_mode)
    try:
        made = creator(config)
    except Exception as error:  # the env's own constructor: say with which config
        raise EnvCreationError(
            f"Making the environment {describe(env)} with env_config {config} failed "
            f"({type(error).__name__}: {error}){_masked_hint(config)}. {_TODO}."
        ) from error
    return _rendering(_wrap(made), render_mode)


def recorded(env: Mapping[str, Any] | None, env_id: str | None) -> tuple[str | None, dict]:
    """(what `make_env` takes, env_config) from policy.json's `env` section, or from the bare
    `env_id` of a version registered before it was recorded."""
    env = env or {}
    return env.get("make") or env_id, dict(env.get("config") or {})


def describe(env: EnvLike) -> str:
    """How `env` is named in messages and tags: ``module:QualName`` for a callable."""
    if isinstance(env, str):
        return env
    return f"{getattr(env, '__module__', '?')}:{getattr(env, '__qualname__', repr(env))}"


def is_multi_agent(env: Any) -> bool:
    """Whether `env` is an RLlib MultiAgentEnv (a PettingZoo env is one once wrapped). Ray
    is imported by then if it is: the env's class derives from Ray's."""
    module = sys.modules.get("ray.rllib.env.multi_agent_env")
    return module is not None and isinstance(env, module.MultiAgentEnv)


def importable_path(value: Any) -> str | None:
    """``module:QualName`` of a class or named function that can be imported again (not a
    lambda, a local function or an object of `__main__`), else None."""
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def _creator(env: EnvLike) -> Callable[..., Any] | None:
    """The callable that makes `env` (RLlib looks a name up in Tune's registry first)."""
    if not isinstance(env, str):
        return env
    return _import(env) if ":" in env else tune_registered(env)


def _import(path: str) -> Callable[..., Any]:
    module_name, _, qualname = path.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as error:
        raise EnvCreationError(
            f"Cannot make the environment {path!r}: importing it failed "
            f"({type(error).__name__}: {error}). {_TODO}."
        ) from None
    if not callable(value):
        raise EnvCreationError(f"{path!r} is not callable: {_TODO}.")
    return value


def tune_registered(name: str) -> Callable[..., Any] | None:
    """The creator `ray.tune.register_env(name, ...)` registered in this process, if Ray is
    imported here; RLlib itself looks a name up there first."""
    registry = sys.modules.get("ray.tune.registry")
    if registry is None:
        return None
    try:
        if registry._global_registry.contains(registry.ENV_CREATOR, name):
            return registry._global_registry.get(registry.ENV_CREATOR, name)
    except Exception:  # a Ray that is shutting down, or a registry of another job
        return None
    return None


def _gymnasium(env_id: str, config: dict[str, Any], render_mode: str | None) -> Any:
    import gymnasium as gym

    kwargs = {**config, **({"render_mode": render_mode} if render_mode else {})}
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as error:  # NameNotFound, NamespaceNotFound, VersionNotFound...
        raise EnvCreationError(
            f"Cannot make the environment {env_id!r}: it is not a gymnasium id "
            f"({type(error).__name__}), not module:callable, nor a name registered with "
            f"ray.tune.register_env in this process{_masked_hint(config)}. {_TODO}."
        ) from None


def _masked_hint(config: dict[str, Any]) -> str:
    """Secrets are masked when a config is recorded: making the env with the mask fails."""
    masked = sorted(k for k, v in config.items() if v == MASK)
    return f"; env_config {masked} were masked when recorded: pass them" if masked else ""


def _wrap(env: Any) -> Any:
    """RLlib's wrapper around a PettingZoo env (AEC or parallel); any other env as it is."""
    if not any(c.__module__.startswith("pettingzoo") for c in type(env).__mro__):
        return env
    from ray.rllib.env.wrappers import pettingzoo_env

    parallel = hasattr(env, "possible_agents") and not hasattr(env, "agent_iter")
    return (pettingzoo_env.ParallelPettingZooEnv if parallel else pettingzoo_env.PettingZooEnv)(env)


def _rendering(env: Any, render_mode: str | None) -> Any:
    """A custom env made without knowing the render mode asked for: set it when the env
    lists that mode and has none (gymnasium keeps it as a plain attribute)."""
    if render_mode and getattr(env, "render_mode", None) is None:
        modes = (getattr(env, "metadata", None) or {}).get("render_modes", [])
        if render_mode in modes:
            env.render_mode = render_mode
    return env
