"""The tiers of rllib_mlflow, lowest first, and what each may import: shared by the import
test (tests/test_tiers.py) and the light install's (tests/test_light_install.py)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rllib_mlflow"

# tier -> the tiers it may import besides its own. `core` is the top-level modules;
# `top` (cli and the package's __init__) may import anything.
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "policy": set(),  # copied standalone into logged models: only itself, relatively
    "mlflow": {"core", "policy"},
    "play": {"core", "policy", "mlflow"},
    "rllib": {"core", "policy"},
    "export": {"core", "policy", "rllib"},
    "register": {"core", "policy", "mlflow", "play", "rllib", "export"},
    "tune": {"core", "policy", "mlflow", "play", "rllib", "export", "register"},
    "top": {"core", "policy", "mlflow", "play", "rllib", "export", "register", "tune"},
}
ORDER = list(MAY_IMPORT)  # for the messages: which of two tiers stands higher
LIGHT_TIERS = ("core", "policy", "mlflow")  # what `pip install rllib-mlflow` imports


def tier_of(module: str) -> str:
    """The tier of a dotted module name inside rllib_mlflow."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "cli":
        return "top"  # the package's __init__ (its attributes too) and the command
    if (PACKAGE / parts[1]).is_dir():
        if parts[1] not in MAY_IMPORT:
            raise KeyError(f"{module}: subpackage {parts[1]!r} has no tier in tests/tiers.py")
        return parts[1]
    return "core"


def module_files() -> dict[str, Path]:
    """Every module of rllib_mlflow by dotted name (a package by its __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def light_modules() -> list[str]:
    """The modules the light install must import without any extra."""
    return [m for m in module_files() if tier_of(m) in LIGHT_TIERS]
