#!/usr/bin/env bash
# Lint, format check and the full test suite (slow tests included). Used by CI (.ci/run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"

ruff check .
ruff format --check .
python -m pytest "$@"
