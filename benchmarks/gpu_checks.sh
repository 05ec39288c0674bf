#!/usr/bin/env bash
# Every GPU timing in one call, for a GPU machine that has
# no network (see docs/speed.md, "GPU").
#
# Needs wheels the machine lacks (keras and two of its dependencies), put in
# .whl/ at the repository root beforehand, on a machine with pip access:
#   benchmarks/gpu_checks.sh --download-wheels
# then, on the GPU machine (carry .whl), from the repository root:
#   bash benchmarks/gpu_checks.sh   # at most 600 s
#   bash benchmarks/gpu_checks.sh --cpu-dry-run   # the same steps, tiny, CPU
#   bash benchmarks/gpu_checks.sh --multi-process  # only the 2-process rows
# Each step has its own timeout; a failed step is reported and the next
# one runs. TensorFlow is not on the GPU image (and its wheel is larger
# than what a call can carry), so there is no TensorFlow GPU timing.
set -u
cd "$(dirname "$0")/.."

KERAS_WHEELS="keras==3.15.1 namex==0.1.0 optree==0.17.0"

if [ "${1:-}" = "--download-wheels" ]; then
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
  ${PYTHON:-python3} -m pip download --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $KERAS_WHEELS
  exit
fi

DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
ONLY_MP=0
[ "${1:-}" = "--multi-process" ] && ONLY_MP=1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = 0 ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  PRESET=dsd_b; B1=32; B2=64; STEPS=10; WARMUP=2; NFE=32
  MP=--mixed-precision
  T_ATTN=60; T_JAX1=150; T_JAX2=120; T_TORCH=90; T_COMPILE=180
  T_DATA=150; N_JPEG=512
else
  export CUDA_VISIBLE_DEVICES="" JAX_PLATFORMS=cpu
  PRESET=dsd_tiny; B1=4; B2=8; STEPS=1; WARMUP=1; NFE=2; MP=""
  T_ATTN=600; T_JAX1=600; T_JAX2=600; T_TORCH=600; T_COMPILE=600
  T_DATA=600; N_JPEG=32
fi
$PY - <<'PY'
import importlib
for name in ("keras", "jax", "jaxlib", "torch", "tensorflow", "numpy"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as error:
        print(name, "not available:", type(error).__name__)
PY

step() {  # step NAME TIMEOUT COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s, $(date -u +%H:%M:%S) UTC)"
  timeout "$limit" "$@"
  local rc=$?
  [ $rc = 0 ] || echo "=== $name FAILED rc=$rc"
}

bench() {  # bench BACKEND BATCH [extra args]: the train_throughput command
  echo env KERAS_BACKEND="$1" "$PY" benchmarks/train_throughput.py \
    --preset "$PRESET" --batch-size "$2" --steps "$STEPS" \
    --warmup "$WARMUP" $MP "${@:3}"
}

if [ "$ONLY_MP" = 0 ]; then
# Worst case, the limits add up to 600 s (one device call's limit); a
# normal run is well inside. Sampling rides on the batch-32 runs, so that
# it costs no second compilation of the training step.
step "torch attention kernel" "$T_ATTN" env KERAS_BACKEND=torch \
  $PY benchmarks/attention_kernel.py --batch-size 4
step "jax $PRESET batch $B1 + sampling ($NFE NFE)" "$T_JAX1" \
  $(bench jax "$B1" --sampler euler --sample-steps "$NFE")
step "jax $PRESET batch $B2" "$T_JAX2" $(bench jax "$B2" --sample-steps 0)
step "torch eager $PRESET + sampling" "$T_TORCH" \
  $(bench torch "$B1" --sampler euler --sample-steps "$NFE")
# Dynamo recompiles Keras' frames after the first call (in the CPU dry run
# one timed step after one warm-up took 18 s; after three warm-ups steps
# took 331 ms, docs/speed.md), so three warm-ups (a later --warmup wins).
step "torch.compile $PRESET" "$T_COMPILE" \
  $(bench torch "$B1" --jit-compile true --sample-steps 0 --warmup 3)
if $PY -c "import tensorflow" 2>/dev/null; then
  step "tensorflow $PRESET" 300 \
    $(bench tensorflow "$B1" --sampler euler --sample-steps "$NFE")
  # The input pipeline (tf.data) against the model: share of the step spent
  # waiting for data, generated JPEGs, every core of the host.
  step "data wait jax $PRESET batch $B1" "$T_DATA" env KERAS_BACKEND=jax \
    $PY benchmarks/data_wait.py --preset "$PRESET" --batch-size "$B1" \
    --steps "$STEPS" --rounds 2 --warmup "$WARMUP" --num-images "$N_JPEG" $MP
else
  echo "=== tensorflow: not installed on this machine, no timing"
fi
fi

# Multi-process (at most 480 s more: run it alone with --multi-process when
# the rows above use the call's 600 s): examples/train_imagenet.py --smoke
# as 2 processes, each launcher's own way (torchrun; KERAS_DISTRIBUTION_*
# for JAX), one GPU per process. NCCL refuses two ranks on one GPU, so with fewer than 2 GPUs
# (and in the dry run) the processes run on the CPU (gloo).
NGPU=0
[ "$DRY" = 0 ] && NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
MP_ENV=""
[ "$NGPU" -lt 2 ] && MP_ENV="CUDA_VISIBLE_DEVICES= JAX_PLATFORMS=cpu"
MP_DIR=$(mktemp -d)
step "torch 2 processes (torchrun) smoke" 240 env $MP_ENV \
  KERAS_BACKEND=torch $PY -m torch.distributed.run --standalone \
  --nproc_per_node 2 examples/train_imagenet.py --smoke \
  --output-dir "$MP_DIR/torch"
jax_two_processes() {
  local port=$((20000 + RANDOM % 20000)) pids="" rc=0 i
  for i in 0 1; do
    local gpu=""
    [ "$NGPU" -ge 2 ] && gpu="CUDA_VISIBLE_DEVICES=$i"
    env $MP_ENV $gpu KERAS_BACKEND=jax \
      KERAS_DISTRIBUTION_JOB_ADDRESSES=127.0.0.1:$port \
      KERAS_DISTRIBUTION_NUM_PROCESSES=2 KERAS_DISTRIBUTION_PROCESS_ID=$i \
      $PY examples/train_imagenet.py --smoke --output-dir "$MP_DIR/jax" &
    pids="$pids $!"
  done
  for i in $pids; do wait "$i" || rc=1; done
  return $rc
}
export NGPU MP_ENV MP_DIR PY
step "jax 2 processes (KERAS_DISTRIBUTION_*) smoke" 240 \
  bash -c "$(declare -f jax_two_processes); jax_two_processes"
ls "$MP_DIR"/*/samples "$MP_DIR"/*/checkpoints 2>/dev/null
rm -rf "$MP_DIR"
echo "=== done $(date -u +%H:%M:%S) UTC"
