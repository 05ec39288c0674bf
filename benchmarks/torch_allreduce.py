"""The gradient all-reduce's share of a PyTorch data-parallel training step.

Run under `torchrun` (gloo on CPU, NCCL on GPUs):

    KERAS_BACKEND=torch python -m torch.distributed.run --standalone \\
        --nproc_per_node 2 benchmarks/torch_allreduce.py --preset dsd_tiny

Times `train_on_batch` on each process's batch in three modes, interleaved
over `--rounds` rounds (the CPU may be shared): `local` (no all-reduce: the
compute alone), `bucketed` (`keras_dsd`'s DDP-like buckets that overlap
the backward pass) and `blocking` (the previous implementation, kept here
for comparison: one blocking all-reduce per variable, issued as its
gradient arrives). The share of the step spent on communication is
`(t_mode - t_local) / t_mode`; for `bucketed` it also prints the time the
end of `backward()` waited for all-reduces still in flight.
"""

import argparse
import statistics
import time

import keras
import machine  # benchmarks/machine.py
import numpy as np
import torch
import torch.distributed as dist

import keras_dsd
from keras_dsd.backend import torch_backend
from keras_dsd.utils import distribution


def blocking_hooks(variables):
    """The pre-bucketing implementation: one blocking all-reduce per
    variable, in its post-accumulate-grad hook."""
    world_size = dist.get_world_size()

    def hook(parameter):
        dist.all_reduce(parameter.grad)
        parameter.grad.div_(world_size)

    return [v.value.register_post_accumulate_grad_hook(hook) for v in variables]


def time_steps(model, images, labels, steps):
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", default="dsd_tiny", choices=sorted(keras_dsd.models.presets)
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="Images per process."
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0)
    args = parser.parse_args()
    load_before = machine.load_average()
    context = distribution.setup_data_parallel()
    if context.num_processes < 2:
        raise SystemExit(
            "torch_allreduce.py: run it under torchrun with "
            "--nproc_per_node 2 or more."
        )
    backbone = keras_dsd.models.DSDBackbone.from_preset(args.preset)
    model = keras_dsd.models.DSDImageGenerator(backbone=backbone, seed=0)
    model.compile()
    size = backbone.image_size
    rng = np.random.default_rng(context.process_index)
    images = rng.integers(0, 256, (args.batch_size, size, size, 3), "uint8")
    labels = rng.integers(0, backbone.num_classes, (args.batch_size,))
    model.train_on_batch(images, labels)  # build and warm up
    variables = model.trainable_variables
    times = {"local": [], "bucketed": [], "blocking": []}
    waiting = []
    for _ in range(args.rounds):
        times["local"].append(time_steps(model, images, labels, args.steps))
        buckets = torch_backend.average_gradients_across_processes(
            variables, args.bucket_cap_mb
        )
        model.train_on_batch(images, labels)
        buckets.seconds_waiting = 0.0
        times["bucketed"].append(time_steps(model, images, labels, args.steps))
        waiting.append(buckets.seconds_waiting / args.steps)
        buckets.remove()
        handles = blocking_hooks(variables)
        times["blocking"].append(time_steps(model, images, labels, args.steps))
        for handle in handles:
            handle.remove()
    if context.is_chief:
        parameter_mib = sum(v.value.numel() * 4 for v in variables) / 2**20
        print(f"machine: {machine.describe_machine()}")
        print(f"load average before the run: {load_before}")
        print(
            f"torch {torch.__version__}, keras {keras.__version__}, "
            f"{dist.get_backend()} x {context.num_processes} processes, "
            f"{args.preset} ({parameter_mib:.1f} MiB of float32 gradients), "
            f"batch {args.batch_size} per process, {args.steps} steps x "
            f"{args.rounds} rounds, medians"
        )
        local = statistics.median(times["local"])
        print(f"local (no all-reduce): {1000 * local:.1f} ms/step")
        for mode in ("bucketed", "blocking"):
            t = statistics.median(times[mode])
            print(
                f"{mode}: {1000 * t:.1f} ms/step, all-reduce share "
                f"{100 * (t - local) / t:.1f} % of the step"
            )
        print(
            "bucketed: end of backward() waited "
            f"{1000 * statistics.median(waiting):.1f} ms/step for "
            f"all-reduces in flight ({args.bucket_cap_mb} MiB buckets)"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
