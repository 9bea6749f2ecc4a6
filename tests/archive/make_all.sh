#!/usr/bin/env bash
# Re-makes the archive of checkpoints written by OLD Ray releases (tests/archive/ray-*/).
# Documentation as much as a script: CI never runs it (the tests only read what it wrote).
# Each Ray gets its own throwaway virtualenv under /tmp/oldray/<version>/ (never in the repo),
# then tests/archive/make_archive.py runs with that venv's python and writes
# tests/archive/ray-<version>/<case>/ (checkpoint, truth.npz, manifest.json).
#
# Usage: bash tests/archive/make_all.sh [VERSION...]   (default: every version below)
#
# Notes on the pins (found by trying):
# - torch: always ==2.13.0 (the CPU wheel on this machine's disk; a plain `torch` would pull
#   CUDA). torch 2.13 requires setuptools>=77, but Ray 2.3-2.9 import
#   pkg_resources._vendor.packaging, which setuptools>=70 no longer has: so setuptools is
#   downgraded to <70 AFTER the install (pip warns that torch wants >=77; torch runs anyway).
# - TensorFlow: tensorflow-cpu 2.15.1 (Keras 2 built in) + tensorflow-probability 0.23.0 and
#   numpy<2, pyarrow<16, pandas<2.2.
# - Ray 2.3.1 (the oldest with Python 3.11 wheels) needs pydantic<2 for Tune and a one-line
#   patch to import on Python 3.11: a dataclass field with a mutable default
#   (ray/data/_internal/execution/interfaces.py: `resource_limits: ExecutionResources =
#   ExecutionResources()`, "ValueError: mutable default ... use default_factory").
#   Its rllib extra pins gymnasium==0.26.3 (Ray 2.9.3 and 2.30: 0.28.1; Ray 2.40: 1.0.0;
#   Ray 2.55.1: 1.2.2).
# - The 2.3.1 and 2.9.3 venvs were made with pip 24.3.1 (`pip install -U "pip<25"` first),
#   the others with the venv's own pip 23.2.1; both resolve the same pins.
# - Ray 2.55.1 accepts tensorflow-cpu 2.15.1 (Keras 2 built in): no tf_keras needed.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
ROOT=/tmp/oldray
COMMON=("numpy<2" "pyarrow<16" "pandas<2.2" "setuptools>=77,<81")
TF=("tensorflow-cpu==2.15.1" "tensorflow-probability==0.23.0")

venv() {  # venv VERSION PIP-REQUIREMENT...
    local version=$1
    shift
    if [ ! -x "$ROOT/$version/bin/python" ]; then
        python3.11 -m venv "$ROOT/$version"
        "$ROOT/$version/bin/pip" install "ray[rllib,tune]==$version" "$@"
    fi
}

patch_231() {  # the Python 3.11 fix for Ray 2.3.1 (idempotent)
    local f="$ROOT/2.3.1/lib/python3.11/site-packages/ray/data/_internal/execution/interfaces.py"
    sed -i \
        -e 's/^    resource_limits: ExecutionResources = ExecutionResources()$/    resource_limits: ExecutionResources = field(default_factory=ExecutionResources)/' \
        -e 's/^from dataclasses import dataclass$/from dataclasses import dataclass, field/' "$f"
}

make() {  # make VERSION CASE...
    local version=$1
    shift
    (cd "$REPO" && "$ROOT/$version/bin/python" tests/archive/make_archive.py \
        "tests/archive/ray-$version" "$@")
}

run_version() {
    case "$1" in
    2.3.1)
        venv 2.3.1 "${TF[@]}" "torch==2.13.0" "${COMMON[@]}" "pydantic<2"
        "$ROOT/2.3.1/bin/pip" install "setuptools<70"
        patch_231
        make 2.3.1 ppo_torch_cartpole ppo_tf2_cartpole_meanstd dqn_torch_cartpole \
            sac_torch_pendulum tune_ppo_torch_cartpole
        ;;
    2.9.3)
        venv 2.9.3 "${TF[@]}" "torch==2.13.0" "${COMMON[@]}"
        "$ROOT/2.9.3/bin/pip" install "setuptools<70"
        make 2.9.3 ppo_tf2_cartpole ppo_torch_pendulum_meanstd dqn_tf2_cartpole \
            sac_torch_pendulum sac_tf2_pendulum ppo_tf2_cartpole_policy tune_ppo_torch_cartpole
        ;;
    2.30.0)
        venv 2.30.0 "torch==2.13.0" "${COMMON[@]}"
        make 2.30.0 tune_ppo_torch_cartpole appo_torch_cartpole
        ;;
    2.40.0)
        venv 2.40.0 "${TF[@]}" "torch==2.13.0" "${COMMON[@]}"
        make 2.40.0 new_ppo_torch_cartpole tune_new_ppo_torch_cartpole new_sac_torch_pendulum \
            ppo_tf2_cartpole
        ;;
    2.55.1)
        venv 2.55.1 "${TF[@]}" "torch==2.13.0" "${COMMON[@]}"
        make 2.55.1 ppo_tf2_cartpole_meanstd new_ppo_torch_pendulum_meanstd
        ;;
    *)
        echo "unknown version $1" >&2
        exit 2
        ;;
    esac
}

for version in "${@:-2.3.1 2.9.3 2.30.0 2.40.0 2.55.1}"; do
    for v in $version; do run_version "$v"; done
done
