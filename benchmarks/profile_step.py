"""Where a training step's time goes, op by op, on the current backend.

Runs a few `train_on_batch` steps of a DSD preset under the backend's own
profiler and prints the total time per op kind per step:

- JAX: `jax.profiler.trace`, the XLA thunks grouped by name with the
  numeric suffix removed (`ynn_fusion.803` -> `ynn_fusion`: dots through
  YNNPACK; `multiply_erf_fusion`: the GELU; ...).
- PyTorch: `torch.profiler`, the aten/oneDNN ops grouped by input shapes
  (which layer's product, which copy).

Op times under a profiler are longer than without one; compare kinds
within one run, and variants of the code with the same command.

    KERAS_BACKEND=jax python benchmarks/profile_step.py --preset dsd_tiny \\
        --batch-size 32
    KERAS_BACKEND=torch python benchmarks/profile_step.py --preset dsd_s \\
        --batch-size 4
"""

import collections
import glob
import gzip
import json
import re
import tempfile

import keras
from train_throughput import model_and_batch  # benchmarks/
from train_throughput import preset_parser


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


def torch_op_table(run, rows):
    """The torch profiler's table of `run()`, grouped by input shapes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        run()
    return p.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows
    )


def main():
    parser = preset_parser(__doc__, batch_size=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()

    model, images, labels = model_and_batch(args.preset, args.batch_size)
    for _ in range(2):  # compile / warm up
        model.train_on_batch(images, labels)

    def run():
        for _ in range(args.steps):
            logs = model.train_on_batch(images, labels, return_dict=True)
        float(logs["loss"])  # wait for asynchronous backends

    backend = keras.backend.backend()
    print(f"backend={backend} preset={args.preset} batch={args.batch_size}")
    if backend == "jax":
        totals = jax_op_times(run, args.steps)
        print(f"all ops: {1000 * sum(totals.values()):.1f} ms/step")
        for name, seconds in totals.most_common(args.rows):
            print(f"{1000 * seconds:10.1f} ms/step  {name}")
    elif backend == "torch":
        print(f"(totals over {args.steps} steps)")
        print(torch_op_table(run, args.rows))
    else:
        raise SystemExit(
            "profile_step.py profiles JAX and PyTorch; for TensorFlow use "
            "tf.profiler with TensorBoard."
        )


if __name__ == "__main__":
    main()
