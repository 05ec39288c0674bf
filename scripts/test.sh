#!/usr/bin/env bash
# Sets up, then runs the whole test suite once per backend (one backend per
# process, as Keras requires). Extra arguments go to pytest.
# BACKENDS="jax torch" bash scripts/test.sh  runs a subset.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
status=0
echo "=== ruff check, ruff format --check ==="
.venv/bin/ruff check . || status=1
.venv/bin/ruff format --check . || status=1
for backend in ${BACKENDS:-tensorflow jax torch}; do
  echo "=== KERAS_BACKEND=$backend ==="
  start=$(date +%s)
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -q -p no:cacheprovider \
    --durations=12 "$@"
  code=$?
  echo "=== $backend: exit $code in $(( $(date +%s) - start )) s ==="
  # pytest exits 5 when it collected no test: that is a failure here too.
  if [ $code -ne 0 ]; then status=1; fi
done
exit $status
