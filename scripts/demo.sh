#!/usr/bin/env bash
# Train PPO on CartPole for a few iterations, exporting and registering every checkpoint in
# MLflow (see examples/cartpole_ppo.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"

python examples/cartpole_ppo.py "$@"
