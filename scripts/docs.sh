#!/usr/bin/env bash
# Build the documentation site (MkDocs, from docs/ and mkdocs.yml) into $1, default site/;
# open OUT/index.html. Strict: a broken link, anchor, snippet or API reference fails the
# build. The Python API pages come from the docstrings (mkdocstrings), the CLI page from the
# click commands (mkdocs-click), the environment variables from environment_variables.py.
# tests/test_api_docs.py builds it too; tests/test_doc_examples.py runs its examples.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/site}")"
# Inside an environment that has mkdocs (the tests' own), use it; else the project's .venv.
python -c "import mkdocs, mkdocstrings, mkdocs_click" 2>/dev/null || source "$ROOT/scripts/_setup.sh"
cd "$ROOT"
# The hooks and mkdocs-click import rllib_mlflow (the light part only): this checkout's.
# Never --quiet: it drops the warnings that --strict counts, and a broken link then passes.
NO_MKDOCS_2_WARNING=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" python -m mkdocs build --strict \
    --config-file mkdocs.yml --site-dir "$OUT"
echo "Documentation site: $OUT/index.html"
