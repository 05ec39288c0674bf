"""Linear probe of the latents: naive vs decoupled vs DSD vs untrained.

Trains `dsd_tiny` with each objective of the collapse study (the
`digits_collapse_study` recipe) for `--steps` optimizer steps on 4,000 of
the embedded MNIST digits, once per seed, then fits a logistic-regression
probe (`keras_dsd.metrics.linear_probe_accuracy`) on the latents of those
4,000 digits, mean-pooled over the 16 tokens (8 features) and flattened
(128 features), and scores it on the 1,000 held out (100 per class). The
same probe on an untrained network of each seed, and on the raw pixels
(`keras_dsd.metrics.probe_accuracy`), are the floors.

Writes `probe.md` (the table: mean and spread over seeds) and
`probe.json` under `--output-dir`.

Usage:
    KERAS_BACKEND=jax python examples/linear_probe.py
    KERAS_BACKEND=jax python examples/linear_probe.py --steps 500 --seeds 0
    python examples/linear_probe.py --smoke     # a few steps, for tests
"""

import argparse
import json
import os
import time

import keras
import numpy as np

import keras_dsd
from keras_dsd.models.dsd.objectives import OBJECTIVES


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=1000,
        help="Optimizer steps per model (batch 32).",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="Seeds: one model per objective and seed.",
    )
    parser.add_argument(
        "--output-dir", default=os.path.join("outputs", "linear_probe")
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=(
            "2 steps run eagerly, one seed, 256 digits: checks the "
            "pipeline only."
        ),
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    return args


def split_digits(smoke=False):
    """4,000 training and 1,000 held-out digits (every fifth)."""
    images, labels = keras_dsd.datasets.load_mnist_digits(image_size=32)
    if smoke:
        images, labels = images[::19][:256], labels[::19][:256]
    held_out = np.arange(len(images)) % 5 == 0
    return (
        (images[~held_out], labels[~held_out]),
        (images[held_out], labels[held_out]),
    )


def train(objective, seed, steps, images, labels, compile_options=None):
    recipe = keras_dsd.recipes.get("digits_collapse_study")
    keras.utils.set_random_seed(seed)
    model = recipe.build_model(
        objective=objective, seed=seed, compile_options=compile_options
    )
    if steps:
        per_epoch = len(images) // recipe.batch_size
        model.fit(
            images,
            labels,
            batch_size=recipe.batch_size,
            epochs=-(-steps // per_epoch),
            steps_per_epoch=min(steps, per_epoch),
            shuffle=True,
            verbose=0,
        )
    return model


def main(argv=None):
    args = parse_args(argv)
    compile_options = None
    if args.smoke:
        args.steps, args.seeds = 2, args.seeds[:1]
        # Two steps check the pipeline: run them eagerly rather than
        # compile a train step for each objective.
        compile_options = {"run_eagerly": True}
    os.makedirs(args.output_dir, exist_ok=True)
    (train_x, train_y), (test_x, test_y) = split_digits(args.smoke)
    pixels = keras_dsd.metrics.probe_accuracy(
        train_x / 255.0, train_y, test_x / 255.0, test_y
    )
    print(f"pixels: {pixels:.3f}", flush=True)
    results = {"pixels": {"flatten": [pixels]}}
    start = time.time()
    for name, objective, steps in [
        ("untrained", "dsd", 0),
        *((mode, mode, args.steps) for mode in OBJECTIVES),
    ]:
        results[name] = {"mean": [], "flatten": []}
        for seed in args.seeds:
            model = train(
                objective, seed, steps, train_x, train_y, compile_options
            )
            for pooling in ("mean", "flatten"):
                accuracy = keras_dsd.metrics.linear_probe_accuracy(
                    model, train_x, train_y, test_x, test_y, pooling=pooling
                )
                results[name][pooling].append(accuracy)
                print(
                    f"{name} seed {seed} {pooling}: {accuracy:.3f} "
                    f"({(time.time() - start) / 60:.1f} min)",
                    flush=True,
                )
    rows = [
        "| features | steps | mean-pooled latents (per seed) | "
        "flattened latents (per seed) |",
        "|---|---|---|---|",
    ]
    for name, values in results.items():
        steps = {"pixels": "-", "untrained": "0"}.get(name, str(args.steps))
        cells = []
        for pooling in ("mean", "flatten"):
            if not values.get(pooling):
                cells.append("-")
                continue
            per_seed = " / ".join(f"{v:.3f}" for v in values[pooling])
            cells.append(f"{np.mean(values[pooling]):.3f} ({per_seed})")
        rows.append(f"| {name} | {steps} | {cells[0]} | {cells[1]} |")
    table = "\n".join(rows)
    print(table)
    with open(os.path.join(args.output_dir, "probe.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output_dir, "probe.json"), "w") as f:
        json.dump(
            {
                "backend": keras.backend.backend(),
                "steps": args.steps,
                "seeds": args.seeds,
                "accuracy": results,
                "minutes": (time.time() - start) / 60,
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
