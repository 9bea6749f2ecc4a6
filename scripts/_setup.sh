# Sourced by the other scripts: create .venv if missing, install the project with the pinned
# versions, and set the environment the demo and the tests run in.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3.11}"
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
# Reinstall only when the requirements changed since the last install (the install is
# editable, so code changes need none).
STAMP=.venv/.rllib-mlflow-installed
if [[ ! -f "$STAMP" || pyproject.toml -nt "$STAMP" || constraints.txt -nt "$STAMP" \
      || requirements-convert.txt -nt "$STAMP" ]]; then
    .venv/bin/python -m pip install --quiet -c constraints.txt -e '.[tune,evaluate,test]'
    # The ONNX-to-TensorFlow converter for custom modules, without its wrong "tensorflow" pin
    # (see requirements-convert.txt).
    .venv/bin/python -m pip install --quiet --no-deps -r requirements-convert.txt
    touch "$STAMP"
fi

export PATH="$ROOT/.venv/bin:$PATH"
# TensorFlow's C++ info logs drown the output otherwise.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# Ray 2.60 turns on token authentication for local clusters when a token exists and warns
# about it; a local, single-machine session needs none.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED=0
