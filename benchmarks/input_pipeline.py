"""Throughput of the image-folder input pipeline, alone.

Writes a folder of ImageNet-like JPEGs (500x375, quality 90, photo-like
content) to a temporary directory, or reads `--data-dir`, then times
`ImageFolder.as_dataset(image_size, batch_size)`: file reads, JPEG decoding,
ADM center crop, flips and batching, with no model. Prints images/s after a
warm-up, with the machine and its load (the CPU may be shared).

    python benchmarks/input_pipeline.py --image-size 256 32
    python benchmarks/input_pipeline.py --data-dir /data/imagenet/train
"""

import argparse
import os
import tempfile
import time

import numpy as np
from machine import describe_machine  # benchmarks/machine.py

import keras_dsd
from keras_dsd.testing import test_utils


def photo_like(height, width, rng):
    """Smooth gradients, soft blobs and noise. At 500x375 and quality 90 a
    JPEG is about 90 KiB, near ImageNet's average (about 110 KiB), so that
    decoding costs about what it does on real photos."""
    return test_utils.photo_like_image(
        height, width, rng, num_blobs=6, blob_size=0.005, noise=18.0
    )


def write_images(root, num_images, num_classes, width, height, quality):
    from PIL import Image

    rng = np.random.default_rng(0)
    total_bytes = 0
    for i in range(num_images):
        folder = os.path.join(root, f"n{i % num_classes:08d}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:06d}.JPEG")
        Image.fromarray(photo_like(height, width, rng)).save(
            path, quality=quality
        )
        total_bytes += os.path.getsize(path)
    return total_bytes / num_images


def time_pipeline(folder, image_size, args):
    dataset = folder.as_dataset(
        image_size,
        args.batch_size,
        seed=0,
        num_parallel_calls=args.num_parallel_calls,
    )
    iterator = iter(dataset)
    for _ in range(args.warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(args.batches):
        images, labels = next(iterator)
    seconds = time.perf_counter() - start
    assert images.shape == (args.batch_size, image_size, image_size, 3)
    return args.batches * args.batch_size / seconds, seconds / args.batches


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="An image folder (<class>/<image>) to read; "
        "default: generate one in a temporary directory.",
    )
    parser.add_argument(
        "--num-images", type=int, default=384, help="Images to generate."
    )
    parser.add_argument(
        "--num-classes", type=int, default=8, help="Class folders to generate."
    )
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument(
        "--quality",
        type=int,
        default=90,
        help="JPEG quality of the generated images.",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=[256, 32],
        help="Output sides to time.",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--batches", type=int, default=12, help="Timed batches."
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="Untimed batches (tracing, autotuning).",
    )
    parser.add_argument(
        "--num-parallel-calls",
        type=int,
        default=None,
        help="Parallel decodes; default tf.data.AUTOTUNE.",
    )
    args = parser.parse_args()

    print(f"machine: {describe_machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = tmp
            start = time.perf_counter()
            mean_bytes = write_images(
                tmp,
                args.num_images,
                args.num_classes,
                args.width,
                args.height,
                args.quality,
            )
            print(
                f"generated {args.num_images} {args.width}x{args.height} "
                f"JPEGs (quality {args.quality}, {mean_bytes / 1024:.0f} KiB "
                f"each) in {time.perf_counter() - start:.1f} s"
            )
        folder = keras_dsd.datasets.ImageFolder(data_dir)
        print(folder)
        import tensorflow as tf

        print(f"tensorflow {tf.__version__}")
        for image_size in args.image_size:
            rate, step = time_pipeline(folder, image_size, args)
            print(
                f"image_size={image_size} batch_size={args.batch_size}: "
                f"{rate:.0f} images/s ({step * 1000:.0f} ms per batch, "
                f"{args.batches} batches after {args.warmup} warm-up)"
            )


if __name__ == "__main__":
    main()
