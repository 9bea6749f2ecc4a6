"""The public API is typed for tools: a type checker reading user code sees the real classes,
not the `Any` of the package's lazy `__getattr__`.

basedpyright (the project's checker) reads a small user script that calls the public API and
reveals the types of what it gets back; each must be the real class."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USER_CODE = """
import rllib_mlflow

policy = rllib_mlflow.load_policy("models:/cartpole@best")
reveal_type(policy)
reveal_type(policy.compute_actions([[0.0, 0.0, 0.0, 0.0]]))
reveal_type(rllib_mlflow.find_version("models:/cartpole/3"))
reveal_type(rllib_mlflow.download_checkpoint("models:/cartpole/3"))
exported = rllib_mlflow.export_checkpoint("checkpoint", "exports")
reveal_type(exported)
reveal_type(exported[0].path)
reveal_type(rllib_mlflow.FORMATS)
reveal_type(rllib_mlflow.ALL_FORMATS)
reveal_type(rllib_mlflow.MLflowCheckpointCallback)
reveal_type(rllib_mlflow.MLflowLoggerCallback)
reveal_type(rllib_mlflow.log_checkpoint)
reveal_type(rllib_mlflow.log_checkpoint("checkpoint", "cartpole"))
report = rllib_mlflow.evaluate("cartpole", env="my_envs:Corridor", env_config={"width": 8})
reveal_type(report)
reveal_type(report.versions[0].returns)
try:
    pass
except rllib_mlflow.RegistryError as error:
    reveal_type(error)
except rllib_mlflow.RLlibMLflowError as error:
    reveal_type(error)
"""

EXPECTED = [
    "Policy",
    "ndarray[",
    "ModelVersion",
    "str",
    "list[ExportedPolicy]",
    "Path",
    "tuple[Literal['saved_model'], Literal['h5'], Literal['onnx']]",
    "tuple[Literal['saved_model'],",
    "type[MLflowCheckpointCallback]",
    "type[MLflowLoggerCallback]",
    "(checkpoint",  # a function with its real signature
    "list[ModelVersion]",
    "EvaluationReport",
    "tuple[float, ...]",
    "RegistryError",
    "RLlibMLflowError",
]


def revealed_types(tmp_path: Path) -> tuple[list[str], list[str]]:
    """What basedpyright reveals in USER_CODE, in order, and the errors it reports."""
    (tmp_path / "user_code.py").write_text(USER_CODE)
    config = {
        "include": ["user_code.py"],
        "extraPaths": [str(ROOT)],  # this checkout's rllib_mlflow, as an installed one
        "pythonVersion": "3.11",
        "typeCheckingMode": "standard",
        "reportMissingTypeStubs": False,
    }
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config))
    done = subprocess.run(
        [_basedpyright(), "--outputjson", "--pythonpath", sys.executable],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    diagnostics = json.loads(done.stdout)["generalDiagnostics"]
    revealed = [
        d["message"].split('" is "', 1)[1][:-1]
        for d in sorted(diagnostics, key=lambda d: d["range"]["start"]["line"])
        if d["severity"] == "information" and d["message"].startswith("Type of ")
    ]
    errors = [d["message"] for d in diagnostics if d["severity"] == "error"]
    return revealed, errors


def _basedpyright() -> str:
    found = shutil.which("basedpyright") or str(Path(sys.executable).parent / "basedpyright")
    if not Path(found).exists():
        pytest.fail("basedpyright is not installed: pip install -e '.[test]'")
    return found


def test_the_public_api_reveals_its_real_types(tmp_path):
    revealed, errors = revealed_types(tmp_path)
    assert not errors, errors
    assert len(revealed) == len(EXPECTED), revealed
    for expected, got in zip(EXPECTED, revealed):
        assert got.startswith(expected), f"revealed {got!r}, expected {expected!r}..."
        assert "Unknown" not in got or expected == "(checkpoint", got
        assert got != "Any", got


def test_the_package_ships_its_type_marker():
    """PEP 561: without py.typed, type checkers ignore an installed package's annotations."""
    assert (ROOT / "rllib_mlflow" / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text()


def test_exported_policy_policy_is_a_deprecated_alias_of_metadata(tmp_path):
    """`ExportedPolicy.policy` held policy.json: renamed `metadata`, the old name still works."""
    from rllib_mlflow.export import ExportedPolicy

    exported = ExportedPolicy("default_policy", tmp_path, ("onnx",), {"parity": {"passed": True}})
    with pytest.warns(DeprecationWarning, match="ExportedPolicy.metadata"):
        assert exported.policy is exported.metadata
    assert exported.parity == {"passed": True}
