#!/usr/bin/env bash
# Build the API reference (HTML, from the docstrings, with pdoc) into docs/api, or into the
# directory given as $1; open docs/api/rllib_mlflow.html. tests/test_api_docs.py builds it too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/docs/api}")"
# Inside an environment that has pdoc (the tests' own), use it; else the project's .venv.
python -c "import pdoc" 2>/dev/null || source "$ROOT/scripts/_setup.sh"
cd "$ROOT"
python - "$OUT" <<'PY'
import pathlib, sys

import pdoc

import rllib_mlflow

# The public API is the package's `__all__`, on one page. Its names are imported lazily, and
# pdoc reads only what the module already holds: resolve them first.
for name in rllib_mlflow.__all__:
    getattr(rllib_mlflow, name)
pdoc.render.configure(docformat="google", show_source=False)
# The submodules are internals: the '!' pattern leaves them out.
pdoc.pdoc("rllib_mlflow", "!rllib_mlflow\\.", output_directory=pathlib.Path(sys.argv[1]))
PY
echo "API reference: $OUT/rllib_mlflow.html"
