#!/usr/bin/env bash
# Creates .venv (if missing) and installs keras_dsd with the three backends,
# the demo data and the test tools, pinned by requirements/constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet \
  -c requirements/constraints.txt \
  -e ".[jax,tensorflow,torch,datasets,demo,eval,dev]"
.venv/bin/python -c "import keras_dsd; print('keras_dsd', keras_dsd.__version__, 'installed in .venv')"
