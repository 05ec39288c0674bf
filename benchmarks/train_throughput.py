"""Training and sampling throughput of a DSD preset on the current backend.

Times `train_on_batch` steps after a warm-up (which absorbs compilation)
and one `generate` call, and prints images/s, step time and peak memory
with the machine it ran on. Data are random uint8 images: this measures
the model step, not an input pipeline.

    for b in jax tensorflow torch; do
      KERAS_BACKEND=$b python benchmarks/train_throughput.py --preset dsd_tiny
    done
"""

import argparse
import resource
import time

import keras
import numpy as np
from machine import describe_machine  # benchmarks/machine.py

import keras_dsd


def machine_description():
    if keras.backend.backend() == "torch":  # no keras.distribution on torch
        import torch

        devices = (
            f"cuda ({torch.cuda.get_device_name()})"
            if torch.cuda.is_available() else "cpu"
        )
    elif keras.backend.backend() == "jax":
        import jax

        devices = ", ".join(
            sorted({f"{d.platform} ({d.device_kind})" for d in jax.devices()})
        )
    else:
        devices = ", ".join(
            sorted(
                {d.split(":")[0] for d in keras.distribution.list_devices()}
            )
        )
    return f"{describe_machine()}; devices: {devices}"


def accelerator_peak_memory_mib():
    """Peak accelerator memory of this process in MiB, or `None` on CPU."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            stats = device.memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return stats["peak_bytes_in_use"] / 2**20
    else:
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            info = tf.config.experimental.get_memory_info(gpus[0].name)
            return info["peak"] / 2**20
    return None


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="dsd_tiny",
                        choices=sorted(keras_dsd.models.presets))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20,
                        help="Timed training steps.")
    parser.add_argument("--warmup", type=int, default=3,
                        help="Untimed steps (compilation).")
    parser.add_argument("--sample-steps", type=int, default=16,
                        help="Heun steps for the sampling timing; 0 skips.")
    parser.add_argument("--mixed-precision", action="store_true")
    args = parser.parse_args()
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")

    backbone = keras_dsd.models.DSDBackbone.from_preset(args.preset)
    model = keras_dsd.models.DSDImageGenerator(backbone=backbone, seed=0)
    model.compile()
    size = backbone.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size, size, size, 3), "uint8")
    labels = rng.integers(0, backbone.num_classes, (args.batch_size,))

    start = time.perf_counter()
    for _ in range(args.warmup):
        model.train_on_batch(images, labels)
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        logs = model.train_on_batch(images, labels, return_dict=True)
    float(logs["loss"])  # wait for asynchronous backends
    step_seconds = (time.perf_counter() - start) / args.steps

    print(f"machine: {machine_description()}")
    print(
        f"backend={keras.backend.backend()} preset={args.preset} "
        f"params={backbone.count_params():,} batch={args.batch_size} "
        f"policy={keras.mixed_precision.global_policy().name}"
    )
    print(
        f"train: {1.0 / step_seconds:.3f} steps/s, "
        f"{args.batch_size / step_seconds:.1f} images/s, "
        f"{1000 * step_seconds:.1f} ms/step "
        f"(warm-up {args.warmup} steps incl. compile: {compile_seconds:.1f} s)"
    )
    if args.sample_steps:
        class_labels = labels % backbone.num_classes
        model.generate(class_labels, num_steps=args.sample_steps, seed=0)
        start = time.perf_counter()
        model.generate(class_labels, num_steps=args.sample_steps, seed=1)
        seconds = time.perf_counter() - start
        nfe = keras_dsd.samplers.num_function_evaluations(
            "heun", args.sample_steps
        )
        print(
            f"sample: {args.batch_size / seconds:.1f} images/s "
            f"(heun, {args.sample_steps} steps = {nfe} NFE, batch "
            f"{args.batch_size})"
        )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak host memory (max RSS): {peak_mib:.0f} MiB")
    device_mib = accelerator_peak_memory_mib()
    if device_mib is not None:
        print(f"peak accelerator memory: {device_mib:.0f} MiB")


if __name__ == "__main__":
    main()
