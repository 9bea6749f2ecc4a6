"""MLflow's rules for names, aliases and tags, checked before any export or server call.

MLflow enforces them on the server, which is too late: by then the export has run and a
LoggedModel may exist that no version points to. These mirror `mlflow.utils.validation`
(MLflow 3.17) without importing mlflow, so the Tune driver can check at construction.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any

from rllib_mlflow.errors import RegistryError

MAX_NAME_LENGTH = 256  # the registered_models.name column
MAX_TAG_KEY_LENGTH = 250
MAX_TAG_VALUE_LENGTH = 100_000  # MLflow's limit for model version tags
MAX_ALIAS_LENGTH = 255
_TAG_KEY = re.compile(r"[/\w.\- :]*")
_ALIAS = re.compile(r"[\w\-]*")
_RESERVED_ALIAS = re.compile(r"[vV]\d+|latest", re.I)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_registered_model_name(name: Any) -> str:
    """Refuse a registered model name MLflow would reject (or store as another name)."""
    if not isinstance(name, str) or not name.strip():
        raise RegistryError(
            "registered_model_name must be a non-empty string, e.g. 'cartpole-ppo'."
        )
    problem = (
        "contains '/', ':', '@', '\\' or a quote"
        if re.search(r"[/:@\\'\"]", name)
        else "contains a control character (e.g. a newline)"
        if _CONTROL.search(name)
        else "starts or ends with a space"
        if name != name.strip()
        else f"is longer than {MAX_NAME_LENGTH} characters"
        if len(name) > MAX_NAME_LENGTH
        else "would resolve to another path"
        if _path_not_unique(name)
        else None
    )
    if problem:
        raise RegistryError(
            f"Invalid registered model name {name[:80]!r}: it {problem}. Use letters, digits, "
            "'-', '_' and '.', e.g. 'cartpole-ppo'."
        )
    return name


def validate_alias(alias: Any) -> str:
    """Refuse an alias MLflow would reject or reserves (`latest`, `v3`)."""
    if (
        not isinstance(alias, str)
        or not alias
        or not _ALIAS.fullmatch(alias)
        or len(alias) > MAX_ALIAS_LENGTH
        or _RESERVED_ALIAS.fullmatch(alias)
    ):
        raise RegistryError(
            f"Invalid alias {str(alias)[:80]!r}: use 1 to {MAX_ALIAS_LENGTH} letters, digits, "
            "'_' or '-', other than 'latest' and 'v<number>' (MLflow reserves them)."
        )
    return alias


def validate_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """Tags as strings, refused (all at once, naming each bad one) where MLflow would."""
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    problems = [_tag_problem(key, value) for key, value in tags.items()]
    problems = [p for p in problems if p]
    if problems:
        raise RegistryError("Invalid tags: " + "; ".join(problems) + ".")
    return tags


def _tag_problem(key: str, value: str) -> str | None:
    if not key or not _TAG_KEY.fullmatch(key) or _path_not_unique(key):
        return (
            f"key {key[:80]!r} may only hold letters, digits, '_', '-', '.', ' ', ':' and '/' "
            "and must not be a path like '..' or '/x'"
        )
    if len(key) > MAX_TAG_KEY_LENGTH:
        return f"key {key[:80]!r}... is longer than {MAX_TAG_KEY_LENGTH} characters"
    if len(value) > MAX_TAG_VALUE_LENGTH:
        limit = MAX_TAG_VALUE_LENGTH
        return f"the value of {key!r} has {len(value):,} characters (at most {limit:,})"
    return None


def _path_not_unique(name: str) -> bool:
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")
