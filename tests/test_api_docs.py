"""The documentation site builds strictly (scripts/docs.sh: MkDocs; a broken link, anchor,
snippet or reference fails it) and its references are complete: the Python API page
documents every public name, the CLI page every command and option, the environment
variables page every variable.

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

import click
import pytest

from rllib_mlflow import environment_variables
from rllib_mlflow.cli import cli

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
    """Each public name on the API page (mkdocstrings: one h3 per name, its members below)
    -> its section as plain text."""
    parts = re.split(r'<h3 id="rllib_mlflow\.(\w+)"', page)
    return {name: _text(body) for name, body in zip(parts[1::2], parts[2::2])}


def _text(markup: str) -> str:
    return _words(html.unescape(re.sub(r"<[^>]+>", " ", markup)))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    _run(["bash", str(ROOT / "scripts" / "docs.sh"), str(out)])
    return out


def _words(text: str) -> str:
    """`text` without its markup and punctuation: what a reader reads of it."""
    return " ".join(re.findall(r"\w+", text))


def test_the_api_reference_documents_every_public_name(site):
    page = (site / "reference" / "api.html").read_text()
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


def test_the_cli_reference_lists_every_command_and_option(site):
    """Generated from the click commands (mkdocs-click): what `--help` says, on one page."""
    page = html.unescape((site / "reference" / "cli.html").read_text())
    parts = re.split(r'<h3 id="rllib-mlflow-([\w-]+)"', page)
    sections = dict(zip(parts[1::2], parts[2::2]))
    assert set(sections) == set(cli.commands)
    for name, command in cli.commands.items():
        options = [o for p in command.params if isinstance(p, click.Option) for o in p.opts]
        missing = [o for o in options if o not in sections[name]]
        assert not missing, (name, missing)


def test_the_environment_variables_page_is_generated_from_the_module(site):
    page = (site / "reference" / "environment-variables.html").read_text()
    for variable in environment_variables.VARIABLES:
        assert f"<code>{variable.name}</code>" in page, variable.name
    assert "<!-- generated" not in page


def _slug(heading: str) -> str:
    """A heading's anchor, as MkDocs' toc and GitHub make it."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


def test_the_readme_is_a_landing_page_whose_links_lead_into_the_site():
    """At most 250 lines, opening with the two commands; every relative link (and anchor)
    names a file and heading that exist, as the site's own links must in its strict build."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    opening = re.search(r"```bash\n(.*?)```", readme, flags=re.S)
    assert opening and [line.split()[:2] for line in opening.group(1).splitlines()] == [
        ["bash", "scripts/demo.sh"],
        ["bash", "scripts/test.sh"],
    ]
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", readme)
    assert len(links) > 20
    for path, anchor in links:
        if path.startswith(("http://", "https://")):
            continue
        target = ROOT / path
        assert target.exists(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, (path, anchor)
