"""How much of a training step waits for the input pipeline.

Trains the same `DSDImageGenerator` two ways, interleaved, in one process:

- **end to end**: `fit` on `ImageFolder.as_dataset(...)` (file reads, JPEG
  decoding, crop, flip, batching: what `examples/train_imagenet.py` feeds),
- **model only**: `fit` on one batch of that pipeline repeated from memory
  (`tf.data.Dataset.from_tensors(batch).repeat()`),

and prints the images/s of each and the share of the end-to-end step spent
waiting for data, `1 - model_only_time / end_to_end_time` (0 when the
pipeline keeps up). The folder is a generated set of ImageNet-like JPEGs
(benchmarks/input_pipeline.py) unless `--data-dir` is given.

    KERAS_BACKEND=jax python benchmarks/data_wait.py --preset dsd_tiny \\
        --batch-size 64
    KERAS_BACKEND=jax python benchmarks/data_wait.py --preset dsd_b \\
        --batch-size 32 --data-dir /data/imagenet/train
"""

import argparse
import os
import statistics
import tempfile
import time

import keras
from input_pipeline import write_images  # benchmarks/input_pipeline.py
from machine import load_average  # benchmarks/machine.py
from train_throughput import machine_description
from train_throughput import versions

import keras_dsd


def time_fit(model, dataset, steps):
    """Seconds per step of `fit` over `steps` batches of `dataset`."""
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps


def measure(data_dir, args):
    import tensorflow as tf

    backbone = keras_dsd.models.DSDBackbone.from_preset(args.preset)
    model = keras_dsd.models.DSDImageGenerator(backbone=backbone, seed=0)
    folder = keras_dsd.datasets.ImageFolder(data_dir)
    pipeline = folder.as_dataset(backbone.image_size, args.batch_size, seed=0)
    batch = next(iter(pipeline))
    in_memory = tf.data.Dataset.from_tensors(batch).repeat()
    # Warm-up: compile the step, fill the pipeline's buffers, autotune.
    time_fit(model, in_memory, args.warmup)
    time_fit(model, pipeline, args.warmup)
    end_to_end, model_only = [], []
    for _ in range(args.rounds):
        end_to_end.append(time_fit(model, pipeline, args.steps))
        model_only.append(time_fit(model, in_memory, args.steps))
    return statistics.median(end_to_end), statistics.median(model_only)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="dsd_tiny")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--steps", type=int, default=10, help="Timed steps per round."
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="Interleaved end-to-end / model-only rounds (medians).",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--data-dir",
        default=None,
        help="An image folder (<class>/<image>); default: generate "
        "--num-images 500x375 JPEGs in a temporary directory.",
    )
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="mixed_bfloat16, as on a GPU.",
    )
    args = parser.parse_args()
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")

    print(f"machine: {machine_description()}")
    print(f"versions: {versions()}")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = tmp
            write_images(tmp, args.num_images, 8, 500, 375, 90)
        end_to_end, model_only = measure(data_dir, args)
    images = args.batch_size
    print(
        f"backend={keras.backend.backend()} preset={args.preset} "
        f"batch={args.batch_size} "
        f"policy={keras.mixed_precision.global_policy().name} "
        f"steps={args.steps} x {args.rounds} rounds "
        f"(medians), {os.cpu_count()} CPU cores for the pipeline"
    )
    print(
        f"end to end: {images / end_to_end:.1f} images/s "
        f"({1000 * end_to_end:.1f} ms/step)"
    )
    print(
        f"model only: {images / model_only:.1f} images/s "
        f"({1000 * model_only:.1f} ms/step)"
    )
    wait = max(0.0, 1.0 - model_only / end_to_end)
    print(f"share of the end-to-end step spent waiting for data: {wait:.1%}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
