"""How a model card writes values: spaces, numbers, counts, code, and the environment."""

from __future__ import annotations

from typing import Any

from rllib_mlflow import names


def env_text(tags: dict[str, str]) -> str | None:
    """How the env is made again (`rllib_mlflow.envs`), as `evaluate` makes it with no flag:
    what it calls and the env_config it passes (secrets masked when recorded)."""
    make = tags.get(names.VERSION_TAG_ENV_MAKE)
    if not make:
        return None
    config = tags.get(names.VERSION_TAG_ENV_CONFIG)
    shown = config if config and len(config) <= 300 else "(in policy.json)" if config else None
    return f"`{make}`" + (f" with env_config `{shown}`" if shown and shown != "{}" else "")


def space_text(space: dict[str, Any] | None) -> str | None:
    if not space:
        return None
    kind = space.get("type")
    if kind == "Box":
        return f"Box(shape={tuple(space['shape'])}, {space['dtype']})"
    if kind == "Discrete":
        return f"Discrete({space['n']})"
    if kind == "MultiDiscrete":
        return f"MultiDiscrete({space['nvec']})"
    if kind in ("Dict", "Tuple"):
        inner = space["spaces"]
        items = inner.items() if kind == "Dict" else enumerate(inner)
        return f"{kind}({', '.join(f'{k}: {space_text(s)}' for k, s in items)})"
    return str(kind)


def split_list(value: str | None) -> list[str]:
    return [v for v in (value or "").split(",") if v]


def code(value: str | None) -> str | None:
    return f"`{value}`" if value else None


def number(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def count(value: str | None) -> str | None:
    try:
        return None if value is None else f"{int(float(value)):,}"
    except ValueError:
        return value
