"""MkDocs hooks (mkdocs.yml `hooks:`): the parts of pages generated from the code.

A page names a generated part by an HTML comment, replaced at build time; GitHub shows the
comment as nothing, the site the table."""

from __future__ import annotations

from collections.abc import Callable

from rllib_mlflow import environment_variables

GENERATED: dict[str, Callable[[], str]] = {
    # docs/reference/environment-variables.md: every variable rllib-mlflow reads.
    "<!-- generated: environment_variables.readme_table() -->": (
        environment_variables.readme_table
    ),
}


def render(markdown: str) -> str:
    """`markdown` with each marker replaced by what it names."""
    for marker, make in GENERATED.items():
        markdown = markdown.replace(marker, make())
    return markdown


def on_page_markdown(markdown: str, **_: object) -> str:
    return render(markdown)
