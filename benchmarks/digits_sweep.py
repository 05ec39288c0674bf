"""Sweep of the digits demo's settings at a fixed number of training steps.

Trains `examples/train_digits.py`'s model once per setting for the same
number of optimizer steps (not minutes, so that a GPU can stand in for the
CPU's 8-minute budget), samples 10 digits per class with the demo's sampler,
and prints the class accuracy under `keras_dsd.metrics`' digit classifier.
This is how the demo's settings were chosen (README, "What the default demo
produces here"); each setting is one seed, so small differences are noise.

    KERAS_BACKEND=jax python benchmarks/digits_sweep.py --steps 3400
    python benchmarks/digits_sweep.py --only uniform,demo --steps 200
"""

import argparse
import json
import math
import os
import sys
import time

import keras
import numpy as np
from machine import describe_machine  # benchmarks/machine.py

import keras_dsd

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                    "examples")
)
import train_digits  # noqa: E402

# Flags of examples/train_digits.py per setting; unnamed flags keep the
# demo's defaults. "guided" settings are also sampled with guidance.
SETTINGS = {
    "demo": [],
    "uniform": ["--time-distribution", "uniform", "--label-dropout", "0",
                "--guidance-scale", "none"],
    "uniform_t_min_0.05": ["--time-distribution", "uniform", "--t-min",
                           "0.05", "--label-dropout", "0",
                           "--guidance-scale", "none"],
    "logit_normal_mean_0": ["--time-mean", "0"],
    "teacher_decay_0.99": ["--teacher-decay", "0.99"],
    "batch_64": ["--batch-size", "64"],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=2000,
                        help="Optimizer steps per setting (at batch 32; "
                             "scaled for other batch sizes).")
    parser.add_argument("--only", default=None,
                        help="Comma-separated settings, of: "
                             + ", ".join(SETTINGS))
    parser.add_argument("--guidance-scales", default="1.5,3,5",
                        help="Comma-separated scales for settings trained "
                             "with label dropout.")
    parser.add_argument("--output", default=None,
                        help="Optional JSON file for the results.")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    names = args.only.split(",") if args.only else list(SETTINGS)
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; choose from "
                     f"{list(SETTINGS)}")
    args.names = names
    try:
        args.scales = [float(s) for s in args.guidance_scales.split(",") if s]
    except ValueError:
        parser.error(f"--guidance-scales must be numbers, got "
                     f"{args.guidance_scales!r}")
    return args


def run_setting(name, flags, steps, scales, images, labels, extractor):
    args = train_digits.parse_args(flags)
    keras.utils.set_random_seed(args.seed)
    steps_per_epoch = math.ceil(len(images) / args.batch_size)
    model = train_digits.build_model(args, steps_per_epoch)
    epochs = max(1, round(steps * 32 / args.batch_size / steps_per_epoch))
    start = time.time()
    history = model.fit(images, labels, batch_size=args.batch_size,
                        epochs=epochs, shuffle=True, verbose=0)
    result = {
        "flags": " ".join(flags),
        "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "train_seconds": round(time.time() - start, 1),
        "latent_effective_rank": float(
            history.history["latent_effective_rank"][-1]
        ),
    }
    class_labels = np.repeat(np.arange(10), 10)
    guided = scales if args.label_dropout > 0 else []
    for scale in [None, *guided]:
        samples = model.generate(
            class_labels, num_steps=args.num_steps, sampler=args.sampler,
            seed=args.seed, guidance_scale=scale,
        )
        _, predicted = keras_dsd.metrics.classify_digits(extractor, samples)
        key = "unguided" if scale is None else f"guidance_{scale:g}"
        result[key] = float(np.mean(predicted == class_labels))
    print(f"{name}: " + json.dumps(result), flush=True)
    return result


def main(argv=None):
    args = parse_args(argv)
    print(f"machine: {describe_machine()}; backend "
          f"{keras.backend.backend()}")
    images, labels = keras_dsd.datasets.load_mnist_digits(image_size=32)
    held_out = np.arange(len(images)) % 10 == 0
    extractor = keras_dsd.metrics.train_digit_classifier(
        images[~held_out], labels[~held_out], seed=0
    )
    _, predicted = keras_dsd.metrics.classify_digits(
        extractor, images[held_out]
    )
    print(f"digit classifier: {np.mean(predicted == labels[held_out]):.1%} "
          f"on {held_out.sum()} held-out digits")
    results = {
        name: run_setting(name, SETTINGS[name], args.steps, args.scales,
                          images, labels, extractor)
        for name in args.names
    }
    if args.output:
        keras_dsd.utils.file_utils.write_json(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
