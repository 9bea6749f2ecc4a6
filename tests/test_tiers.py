"""Each tier imports nothing above it, and no module grows past what a reader takes in at once.

Read from the source (every import statement, at module level or inside a function, and
`importlib.import_module` / `import_feature` of a literal name), not by importing: a lazy
import inside a function is a dependency all the same.
"""

from __future__ import annotations

import ast

import pytest

from tests.tiers import MAY_IMPORT, ORDER, PACKAGE, module_files, tier_of

MAX_LINES = 350
_DYNAMIC = {"import_module", "import_feature"}


# Import cycles within a tier that a change under way removes, each as the set of modules
# in it; the test fails once one is gone, so that the entry goes too. None is under way.
KNOWN_CYCLES: list[set[str]] = []


def imported_modules(
    source: str, module: str, is_package: bool = False, *, type_checking: bool = True
) -> set[str]:
    """The rllib_mlflow modules that `source` (the text of `module`) imports; without
    `type_checking`, leaving out those imported only for type checkers."""
    found = set()
    for node in _nodes(ast.parse(source), type_checking):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            # `from package import name`: the submodule when there is one, else the package.
            found.update(
                f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base
                for alias in node.names
            )
        elif isinstance(node, ast.Call) and _called(node) in _DYNAMIC and node.args:
            if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return {name for name in found if name.split(".")[0] == "rllib_mlflow"}


def _nodes(tree: ast.AST, type_checking: bool):
    """Every node of `tree`; without `type_checking`, not those under `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(tree):
        if not type_checking and isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from (n for statement in child.orelse for n in _nodes_and_self(statement))
            continue
        yield child
        yield from _nodes(child, type_checking)


def _nodes_and_self(node: ast.AST):
    yield node
    yield from _nodes(node, type_checking=False)


def _is_type_checking(test: ast.expr) -> bool:
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    package = package[: len(package) - node.level + (1 if is_package else 0)]
    return ".".join(package + ([node.module] if node.module else []))


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _called(call: ast.Call) -> str | None:
    function = call.func
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)


def violations(module: str, imported: set[str]) -> list[str]:
    tier = tier_of(module)
    allowed = MAY_IMPORT[tier] | {tier}
    found = []
    for name in sorted(imported):
        other = tier_of(name)
        if other in allowed:
            continue
        if ORDER.index(other) > ORDER.index(tier):
            relation = f"tier {other} above tier {tier}"
        else:
            relation = f"tier {tier} may not import tier {other}"
        found.append(f"{module} -> {name} ({relation})")
    return found


def test_every_name_imported_from_rllib_mlflow_exists():
    """A lazy import of a moved or renamed module fails only when its function runs: find
    them all here, from the source."""
    missing = []
    for module, path in module_files().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = _absolute(node, module, path.name == "__init__.py")
                if base.split(".")[0] != "rllib_mlflow":
                    continue
                missing += [
                    f"{module}: from {base} import {alias.name}"
                    for alias in node.names
                    if not _is_module(f"{base}.{alias.name}") and not _defines(base, alias.name)
                ]
            elif isinstance(node, ast.Import):
                missing += [
                    f"{module}: import {alias.name}"
                    for alias in node.names
                    if alias.name.split(".")[0] == "rllib_mlflow" and not _is_module(alias.name)
                ]
    assert not missing, "\n".join(missing)


def _defines(module: str, name: str) -> bool:
    """Whether `module` (a module or package of rllib_mlflow) has `name` at its top level."""
    path = PACKAGE.parent.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if not path.is_file():
        return False
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found = {node.name}
        elif isinstance(node, ast.Assign):
            found = {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found = {node.target.id}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            found = {(a.asname or a.name).split(".")[0] for a in node.names}
        else:
            continue
        if name in found:
            return True
    return False


def test_the_policy_package_imports_itself_only_relatively():
    """It ships inside each logged model under another name (`rllib_mlflow_policy`), where
    an absolute `rllib_mlflow...` import would fail."""
    found = []
    for module, path in module_files().items():
        if tier_of(module) != "policy":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            absolute = (isinstance(node, ast.ImportFrom) and not node.level and node.module) or (
                isinstance(node, ast.Import) and node.names[0].name
            )
            if absolute and absolute.split(".")[0] == "rllib_mlflow":
                found.append(f"{module}: import of {absolute}")
    assert not found, "\n".join(found)


def test_each_tier_imports_nothing_above_it():
    found = []
    for module, path in module_files().items():
        imported = imported_modules(path.read_text(), module, path.name == "__init__.py")
        found += violations(module, imported)
    assert not found, "imports against the tiers (tests/tiers.py):\n" + "\n".join(found)


def import_cycles() -> list[dict[str, set[str]]]:
    """The import cycles between modules of one tier, each as {module: the modules of the
    cycle it imports}. Lazy imports count (one that closes a cycle only hides it until the
    function runs); imports for type checkers only do not."""
    files = module_files()
    graph = {}
    for module, path in files.items():
        imported = imported_modules(
            path.read_text(), module, path.name == "__init__.py", type_checking=False
        )
        graph[module] = {
            name
            for name in imported
            if name in files and name != module and tier_of(name) == tier_of(module)
        }
    return [{m: graph[m] & cycle for m in sorted(cycle)} for cycle in _strongly_connected(graph)]


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The components of `graph` with more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = {node}
            while (member := stack.pop()) != node:
                component.add(member)
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_tier_has_an_import_cycle():
    cycles = import_cycles()
    new = [cycle for cycle in cycles if set(cycle) not in KNOWN_CYCLES]
    assert not new, "import cycles within a tier (module -> the modules of its cycle):\n" + (
        "\n".join(
            "; ".join(f"{m} -> {', '.join(sorted(imports))}" for m, imports in cycle.items())
            for cycle in new
        )
    )
    gone = [known for known in KNOWN_CYCLES if known not in [set(c) for c in cycles]]
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_the_cycle_finder_sees_lazy_imports_and_not_type_checking_ones():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _strongly_connected(graph) == [{"a", "b", "c"}]
    source = """
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from rllib_mlflow.mlflow import card
else:
    from rllib_mlflow.mlflow import runs

def lazy():
    from rllib_mlflow.mlflow import versions
"""
    module = "rllib_mlflow.mlflow.flavor"
    assert imported_modules(source, module, type_checking=False) == {
        "rllib_mlflow.mlflow.runs",
        "rllib_mlflow.mlflow.versions",
    }
    assert "rllib_mlflow.mlflow.card" in imported_modules(source, module)


@pytest.mark.parametrize("module", ["rllib_mlflow.cli.registry", "rllib_mlflow.cli.evaluation"])
def test_the_registry_commands_import_no_training_tier(module):
    """`versions` and `prune` run in the light install, `evaluate` with `[evaluate]`."""
    imported = imported_modules(module_files()[module].read_text(), module)
    training = {"rllib", "export", "register", "tune"}
    assert not {name for name in imported if tier_of(name) in training}


def test_no_module_is_longer_than_a_reader_takes_in():
    long = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in module_files().values()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_reader_sees_every_form_of_import():
    source = """
import os
import rllib_mlflow
import rllib_mlflow.tune.worker as worker
from rllib_mlflow import __version__, errors
from rllib_mlflow.mlflow import card
from rllib_mlflow.export import FORMATS
from . import stores
from ..play.replay import Replay
from .. import paths

def lazy():
    from rllib_mlflow.register.registration import log_checkpoint
    importlib.import_module("rllib_mlflow.rllib.checkpoint")
"""
    assert imported_modules(source, "rllib_mlflow.mlflow.runs") == {
        "rllib_mlflow",
        "rllib_mlflow.tune.worker",
        "rllib_mlflow.errors",
        "rllib_mlflow.mlflow.card",
        "rllib_mlflow.export",
        "rllib_mlflow.mlflow.stores",
        "rllib_mlflow.play.replay",
        "rllib_mlflow.paths",
        "rllib_mlflow.register.registration",
        "rllib_mlflow.rllib.checkpoint",
    }
    assert imported_modules("from . import card", "rllib_mlflow.mlflow", is_package=True) == {
        "rllib_mlflow.mlflow.card"
    }
    assert violations("rllib_mlflow.mlflow.card", {"rllib_mlflow.play.replay"}) == [
        "rllib_mlflow.mlflow.card -> rllib_mlflow.play.replay (tier play above tier mlflow)"
    ]
    assert violations("rllib_mlflow.rllib.checkpoint", {"rllib_mlflow.mlflow.runs"}) == [
        "rllib_mlflow.rllib.checkpoint -> rllib_mlflow.mlflow.runs "
        "(tier rllib may not import tier mlflow)"
    ]


@pytest.mark.parametrize(
    ("module", "tier"),
    [
        ("rllib_mlflow", "top"),
        ("rllib_mlflow.cli", "top"),
        ("rllib_mlflow.errors", "core"),
        ("rllib_mlflow.policy.serving", "policy"),
        ("rllib_mlflow.tune", "tune"),
    ],
)
def test_tier_of(module, tier):
    assert tier_of(module) == tier
