#!/usr/bin/env bash
# Train PPO on CartPole for a few iterations, exporting and registering every checkpoint in
# MLflow with its model card and replay (see examples/cartpole_ppo.py). Prints one line per
# iteration, rllib-mlflow's messages, and commands to go on with. Writes mlflow.db and
# ray_results/ into the directory it is run from (not the repository's, unless run there).
set -euo pipefail
HERE="$PWD"
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"  # sets up .venv (and cd's to the repository)
cd "$HERE"

# Third-party notices off, in every process the demo starts (Ray's workers, the export worker).
export PYTHONWARNINGS=ignore TF_ENABLE_ONEDNN_OPTS=0 TF_CPP_MIN_LOG_LEVEL=3
python "$ROOT/examples/cartpole_ppo.py" "$@"
