#!/usr/bin/env bash
# Sets up, lints, then runs the tests once per backend (one backend per
# process, as Keras requires).
#   bash scripts/test.sh        the fast tier: every test but those marked
#                               `large`, before every commit.
#   bash scripts/test.sh --all  the full tier: every test (what CI runs).
# Tests marked `backend_independent` run with the first backend only.
# The fast tier runs TensorFlow's and JAX's tests in 2 pytest-xdist
# workers (measured faster on 2 cores; PyTorch's were slower, so it stays
# in one process, as does the full tier). Each backend's run writes every
# test's duration to outputs/test-durations-<backend>.txt (docs/tests.md).
# Other arguments go to pytest; BACKENDS="jax torch" runs a subset.
set -uo pipefail
cd "$(dirname "$0")/.."
tier=()
args=()
for arg in "$@"; do
  if [ "$arg" = "--all" ]; then tier=(--run-large); else args+=("$arg"); fi
done
bash scripts/setup.sh || exit 1
status=0
echo "=== ruff check, ruff format --check ==="
.venv/bin/ruff check . || status=1
.venv/bin/ruff format --check . || status=1
once=()
for backend in ${BACKENDS:-tensorflow jax torch}; do
  echo "=== KERAS_BACKEND=$backend ==="
  workers=()
  if [ ${#tier[@]} -eq 0 ] && [ "$backend" != torch ]; then
    workers=(-n 2 --dist loadscope)
  fi
  start=$(date +%s)
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -q -p no:cacheprovider \
    --durations=12 --durations-file "outputs/test-durations-$backend.txt" \
    "${workers[@]}" "${tier[@]}" "${once[@]}" "${args[@]}"
  code=$?
  echo "=== $backend: exit $code in $(( $(date +%s) - start )) s ==="
  # pytest exits 5 when it collected no test: a failure for the first
  # backend; later ones may have nothing left but backend-independent tests.
  if [ $code -ne 0 ] && { [ $code -ne 5 ] || [ ${#once[@]} -eq 0 ]; }; then
    status=1
  fi
  once=(--skip-backend-independent)
done
exit $status
