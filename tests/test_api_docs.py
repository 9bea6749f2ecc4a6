"""The API reference builds (scripts/docs.sh, pdoc) and documents every public name.

Both the build and the reading of the docstrings run in subprocesses: resolving the public
names imports the export side (Ray, torch, TensorFlow), which the test process, like a
light install's, keeps out."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each public name -> the first line of its docstring; None for a constant (its
# value has no docstring of its own: the package docstring describes it).
DOCSTRINGS = """
import inspect, json, rllib_mlflow
found = {}
for name in rllib_mlflow.__all__:
    value = getattr(rllib_mlflow, name)
    documented = inspect.isclass(value) or inspect.isroutine(value)
    found[name] = (inspect.getdoc(value) or "").splitlines()[0] if documented else None
print(json.dumps({"names": found, "package": rllib_mlflow.__doc__}))
"""


def _env() -> dict[str, str]:
    # This checkout's rllib_mlflow, with the interpreter (and pdoc) running the tests.
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _run(command: list[str]) -> str:
    done = subprocess.run(
        command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def _sections(page: str) -> dict[str, str]:
    """Each documented name on a pdoc page -> its section as plain text."""
    found = re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S)
    return {name: _words(html.unescape(re.sub(r"<[^>]+>", " ", body))) for name, body in found}


def _words(text: str) -> str:
    """`text` without its markup and punctuation: what a reader reads of it."""
    return " ".join(re.findall(r"\w+", text))


def test_the_api_reference_documents_every_public_name(tmp_path):
    _run(["bash", str(ROOT / "scripts" / "docs.sh"), str(tmp_path)])
    page = (tmp_path / "rllib_mlflow.html").read_text()
    sections = _sections(page)
    public = json.loads(_run([sys.executable, "-c", DOCSTRINGS]))
    missing = [name for name in public["names"] if name not in sections]
    assert not missing, f"public names missing from the API reference: {missing}"
    for name, first_line in public["names"].items():
        if first_line is None:  # a constant: shown with its value, named by the package
            assert re.search(rf"\b{name}\b", public["package"]), name
            continue
        assert first_line, f"{name} has no docstring"
        assert _words(first_line) in sections[name], (name, first_line, sections[name][:300])


def test_the_package_docstring_names_every_public_name():
    """The package's docstring is the first page of the reference and `help(rllib_mlflow)`."""
    import rllib_mlflow  # the package itself imports no extra

    named = set(re.findall(r"\b\w+\b", rllib_mlflow.__doc__ or ""))
    assert not set(rllib_mlflow.__all__) - named
