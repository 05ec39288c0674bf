"""Where a training step's time goes, op by op, on the current backend.

Runs a few `train_on_batch` steps of a DSD preset under the backend's own
profiler and prints the total time per op kind per step:

- JAX: `jax.profiler.trace`, the XLA thunks grouped by name with the
  numeric suffix removed (`ynn_fusion.803` -> `ynn_fusion`: dots through
  YNNPACK; `multiply_erf_fusion`: the GELU; ...).
- PyTorch: `torch.profiler`, the aten/oneDNN ops grouped by input shapes
  (which layer's product, which copy), or by name only with `--by-name`
  (without recording shapes, which itself lengthens small ops several
  times).
- PyTorch with `--phases`: no profiler, the wall time per step of each
  phase of Keras' eager step, timed around the model's own methods: the
  autoencoder forward (`call`), the rest of the loss (`compute_loss`: the
  teacher's encode, the denoiser, the losses and metrics), the optimizer
  (`optimizer.apply`: clipping and the update), the EMA updates
  (`_update_averages`), and what is left of the step: the backward pass
  and Keras' own bookkeeping.

Op times under a profiler are longer than without one; compare kinds
within one run, and variants of the code with the same command.

    KERAS_BACKEND=jax python benchmarks/profile_step.py --preset dsd_tiny \\
        --batch-size 32
    KERAS_BACKEND=torch python benchmarks/profile_step.py --preset dsd_s \\
        --batch-size 4
    KERAS_BACKEND=torch python benchmarks/profile_step.py --preset dsd_tiny \\
        --batch-size 1 --phases --steps 30
"""

import collections
import glob
import gzip
import json
import re
import tempfile
import time

import keras
import machine  # benchmarks/machine.py
from train_throughput import model_and_batch  # benchmarks/
from train_throughput import preset_parser
from train_throughput import print_conditions


def jax_op_times(run, steps):
    """`{op kind: seconds per step}` of XLA's thunks while `run()` runs."""
    import jax

    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            run()
        (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    threads = {
        (e.get("pid"), e.get("tid")): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    totals = collections.Counter()
    for event in events:
        if event.get("ph") != "X":
            continue
        thread = threads.get((event.get("pid"), event.get("tid")), "")
        name = event["name"]
        # Python frames and the executor's own bookkeeping are not ops.
        if (
            "python" in thread
            or name.startswith("$")
            or "Thunk" in name
            or "Await" in name
        ):
            continue
        totals[re.sub(r"\.\d+$", "", name)] += event["dur"] * 1e-6 / steps
    return totals


def torch_op_table(run, rows, by_shape=True):
    """The torch profiler's table of `run()`, grouped by input shapes (or
    by op name only)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(
        activities=[ProfilerActivity.CPU], record_shapes=by_shape
    ) as p:
        run()
    return p.key_averages(group_by_input_shape=by_shape).table(
        sort_by="self_cpu_time_total", row_limit=rows
    )


def torch_phase_times(model, run, steps):
    """`{phase: seconds per step}` of `run()`, a loop of `steps` eager
    training steps, timed around the model's methods that Keras' step
    calls (see the module docstring), then the rest and the whole step."""
    totals = collections.Counter()
    phases = {
        "forward (autoencoder)": (model, "call"),
        "loss (teacher, denoiser, metrics)": (model, "compute_loss"),
        "optimizer (clip + update)": (model.optimizer, "apply"),
        "EMA updates": (model, "_update_averages"),
    }
    for phase, (owner, name) in phases.items():
        method = getattr(owner, name)

        def timed(*args, _method=method, _phase=phase, **kwargs):
            start = time.perf_counter()
            result = _method(*args, **kwargs)
            totals[_phase] += time.perf_counter() - start
            return result

        setattr(owner, name, timed)  # an instance attribute shadows it
    try:
        start = time.perf_counter()
        run()
        totals["step"] = time.perf_counter() - start
    finally:
        for owner, name in phases.values():
            delattr(owner, name)
    step = totals.pop("step")
    totals["backward and the rest"] = step - sum(totals.values())
    totals["whole step"] = step
    return {phase: seconds / steps for phase, seconds in totals.items()}


def main():
    parser = preset_parser(__doc__, batch_size=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument(
        "--by-name",
        action="store_true",
        help="PyTorch: group ops by name, without recording shapes.",
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="PyTorch: wall time per phase of the step, no profiler.",
    )
    args = parser.parse_args()

    load_before = machine.load_average()
    model, images, labels = model_and_batch(args.preset, args.batch_size)
    for _ in range(2):  # compile / warm up
        model.train_on_batch(images, labels)

    def run():
        for _ in range(args.steps):
            logs = model.train_on_batch(images, labels, return_dict=True)
        float(logs["loss"])  # wait for asynchronous backends

    backend = keras.backend.backend()
    print_conditions(load_before)
    print(f"backend={backend} preset={args.preset} batch={args.batch_size}")
    if backend == "jax":
        totals = jax_op_times(run, args.steps)
        print(f"all ops: {1000 * sum(totals.values()):.1f} ms/step")
        for name, seconds in totals.most_common(args.rows):
            print(f"{1000 * seconds:10.1f} ms/step  {name}")
    elif backend == "torch" and args.phases:
        for phase, seconds in torch_phase_times(model, run, args.steps).items():
            print(f"{1000 * seconds:10.1f} ms/step  {phase}")
    elif backend == "torch":
        print(f"(totals over {args.steps} steps)")
        print(torch_op_table(run, args.rows, by_shape=not args.by_name))
    else:
        raise SystemExit(
            "profile_step.py profiles JAX and PyTorch; for TensorFlow use "
            "tf.profiler with TensorBoard."
        )


if __name__ == "__main__":
    main()
