#!/usr/bin/env bash
# Lint, format check and the full test suite (slow tests included). Used by CI (.ci/run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"

# The UI tests drive Debian's chromium (never a browser download).
if [[ ! -x /usr/bin/chromium ]]; then
    SUDO=$([[ $(id -u) -eq 0 ]] && echo "" || echo sudo)
    $SUDO apt-get install -y -q chromium >/dev/null || {
        $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null
    }
fi

ruff check .
ruff format --check .
# The package's annotations (pyproject [tool.basedpyright]): the public API is typed for users.
basedpyright
# Two processes, each taking whole files (the module fixtures train once): most tests wait on
# servers, subprocesses and Ray rather than compute, so two cores finish in far less time.
python -m pytest -n 2 --dist loadfile "$@"
