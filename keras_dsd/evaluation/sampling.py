"""Sampling a trained generator in resumable chunks, to an ADM `.npz`.

`generate_samples` writes, under one folder:

- `chunks/chunk_XXXXX.npz`: the samples, one file per finished chunk.
  Each chunk is written to a temporary file and renamed, so a killed run
  leaves only whole chunks, and a rerun with the same settings skips them
  (chunk `i` always draws its noise from `(seed, i)`, so a resumed run
  gives the same samples as an uninterrupted one). `chunks/manifest.json`
  records the settings; a rerun with other settings is refused.
- `samples_NxHxWx3.npz`: the samples in the layout of the ADM evaluator
  (guided-diffusion's `evaluator.py`): uint8 NHWC under `arr_0`, int64
  labels under `arr_1`; also written atomically.

Sample `k` has class `k % num_classes`, so every chunk is balanced and the
whole set has exactly `num_samples / num_classes` samples per class.
"""

import json
import math
import os
import time
import zipfile

import keras
import numpy as np

from keras_dsd import samplers
from keras_dsd.evaluation import files
from keras_dsd.models import DSDImageGenerator
from keras_dsd.utils import file_utils
from keras_dsd.utils import validation
from keras_dsd.version import __version__

# === The model ===


def load_generator(path):
    """Loads a `DSDImageGenerator` for sampling, in float32.

    Sets the global dtype policy to float32 and converts a mixed-precision
    model with `as_float32`.

    Args:
        path: string. A `.keras` file of a `DSDImageGenerator`, or a
            folder written by `DSDImageGenerator.save_to_preset`.

    Returns:
        The `DSDImageGenerator`, with a float32 network.

    Raises:
        ValueError: `path` is neither, or holds another kind of model.
    """
    keras.config.set_dtype_policy("float32")
    if os.path.isdir(path):
        model = DSDImageGenerator.from_preset(path)
    elif os.path.isfile(path):
        model = keras.saving.load_model(path, compile=False)
    else:
        raise ValueError(
            f"{path!r} is neither a .keras file nor a folder. Pass a .keras "
            "file or a folder written by DSDImageGenerator.save_to_preset "
            "(built-in preset names are untrained networks)."
        )
    if not isinstance(model, DSDImageGenerator):
        raise ValueError(
            f"{path!r} holds a {type(model).__name__}, not a "
            "keras_dsd.models.DSDImageGenerator."
        )
    return as_float32(model)


def as_float32(model):
    """The model with a float32 network (a copy when it is mixed precision).

    Variables of a mixed-precision model are float32 already, so the copy
    is exact; only the compute dtype changes.

    Args:
        model: a `DSDImageGenerator`.

    Returns:
        `model` itself when it is float32, else a float32 copy.
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


def check_sample_counts(model, num_samples, num_classes=None):
    """Checks that `num_samples` splits evenly over the sampled classes.

    Args:
        model: a `DSDImageGenerator`.
        num_samples: int >= 1. Samples in all.
        num_classes: int or `None`. Sample classes `0..num_classes-1`.
            Defaults to the model's `num_classes`.

    Returns:
        The number of classes sampled.

    Raises:
        ValueError: `num_samples` < 1, more classes than the model has, or
            `num_samples` not a multiple of the number of classes.
    """
    num_samples = validation.check_positive_int(num_samples, "num_samples")
    model_classes = model.backbone.num_classes
    if num_classes is None:
        num_classes = model_classes
    num_classes = validation.check_positive_int(num_classes, "num_classes")
    if num_classes > model_classes:
        raise ValueError(
            f"num_classes={num_classes} exceeds the model's "
            f"num_classes={model_classes}."
        )
    if num_samples % num_classes:
        raise ValueError(
            f"num_samples={num_samples} is not a multiple of the "
            f"{num_classes} classes; equal samples per class need e.g. "
            f"{num_classes * max(1, num_samples // num_classes)}."
        )
    return num_classes


# === Chunks ===


def chunk_seed(seed, index):
    """The noise seed of chunk `index`: independent of the other chunks.

    Args:
        seed: int. The run's seed.
        index: int. The chunk's index.

    Returns:
        An int in `[0, 2**32)`.
    """
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def chunk_path(chunk_dir, index):
    """The file of chunk `index`: `<chunk_dir>/chunk_XXXXX.npz`."""
    return os.path.join(chunk_dir, f"chunk_{index:05d}.npz")


def _chunk_is_complete(path, num, image_shape):
    if not os.path.isfile(path):
        return False
    try:
        headers = files.npz_headers(path)
    except (OSError, ValueError, zipfile.BadZipFile):
        return False
    images = headers.get("images")
    labels = headers.get("labels")
    return (
        images == ((num, *image_shape), np.uint8)
        and labels is not None
        and labels[0] == (num,)
    )


def check_manifest(chunk_dir, manifest):
    """Records the settings of a chunk folder, or checks them on a rerun.

    Writes `manifest` to `<chunk_dir>/manifest.json` when there is none.

    Args:
        chunk_dir: string. The chunk folder.
        manifest: dict. The settings the chunks are generated with.

    Raises:
        ValueError: the folder holds chunks generated with other settings.
    """
    path = os.path.join(chunk_dir, "manifest.json")
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        differs = sorted(
            key
            for key in set(previous) | set(manifest)
            if previous.get(key) != manifest.get(key)
        )
        if differs:
            raise ValueError(
                f"{chunk_dir} holds chunks generated with other settings "
                f"(different: {', '.join(differs)}). Use another output "
                "folder (--output-dir), or delete that one to start over."
            )
        return
    files.write_json(path, manifest)


def generate_chunks(
    model,
    chunk_dir,
    num_samples,
    num_classes=None,
    chunk_size=1000,
    sampler="heun",
    num_steps=32,
    guidance_scale=None,
    time_shift=1.0,
    seed=0,
    batch_size=64,
    model_digest=None,
    verbose=True,
):
    """Generates the chunks that are missing from `chunk_dir`.

    Chunks already complete there (same settings, see `check_manifest`)
    are kept as they are; leftover temporary files of a killed run are
    removed.

    Args:
        model: a `DSDImageGenerator`.
        chunk_dir: string. The chunk folder; created if missing.
        num_samples: int >= 1. Samples in all, a multiple of the number of
            classes.
        num_classes: int or `None`. Sample classes `0..num_classes-1`.
            Defaults to the model's `num_classes`.
        chunk_size: int. Samples per chunk file. Defaults to `1000`.
        sampler: string. A sampler of `keras_dsd.samplers.SAMPLERS`.
            Defaults to `"heun"`.
        num_steps: int. Sampler steps. Defaults to `32`.
        guidance_scale: float or `None`. Classifier-free guidance; none
            by default.
        time_shift: float. Time-grid shift (1 = uniform). Defaults to `1.0`.
        seed: int. Chunk `i` draws its noise from `chunk_seed(seed, i)`.
            Defaults to `0`.
        batch_size: int. Samples per compiled generation call. Defaults to
            `64`.
        model_digest: string or `None`. Names the model in the manifest
            (e.g. `file_digest` of its file), so that chunks of another
            model are refused.
        verbose: bool. Print progress. Defaults to `True`.

    Returns:
        `(paths, counts)`: the chunk files in order, and a dict with
        `"chunks"`, `"chunks_reused"` and `"chunks_generated"`.
    """
    num_classes = check_sample_counts(model, num_samples, num_classes)
    chunk_size = validation.check_positive_int(chunk_size, "chunk_size")
    validation.check_positive_int(batch_size, "batch_size")
    samplers.check_sampler(sampler)
    samplers.check_num_steps(num_steps)
    network = model.inference_backbone
    image_shape = (network.image_size, network.image_size, 3)
    os.makedirs(chunk_dir, exist_ok=True)
    for name in os.listdir(chunk_dir):
        if name.startswith(".tmp-"):  # left by a killed run
            os.remove(os.path.join(chunk_dir, name))
    check_manifest(
        chunk_dir,
        {
            "model_sha256": model_digest,
            "num_samples": num_samples,
            "num_classes": num_classes,
            "chunk_size": chunk_size,
            "sampler": sampler,
            "num_steps": num_steps,
            "guidance_scale": guidance_scale,
            "time_shift": time_shift,
            "seed": seed,
            "image_shape": list(image_shape),
        },
    )

    num_chunks = math.ceil(num_samples / chunk_size)
    bounds = [
        (i * chunk_size, min((i + 1) * chunk_size, num_samples))
        for i in range(num_chunks)
    ]
    paths = [chunk_path(chunk_dir, i) for i in range(num_chunks)]
    finished = {
        i
        for i, (start, end) in enumerate(bounds)
        if _chunk_is_complete(paths[i], end - start, image_shape)
    }
    done = sum(bounds[i][1] - bounds[i][0] for i in finished)
    if finished and verbose:
        print(
            f"Resuming: {len(finished)}/{num_chunks} chunks "
            f"({done} samples) already in {chunk_dir}"
        )
    progbar = keras.utils.Progbar(
        num_samples, unit_name="sample", verbose=1 if verbose else 0
    )
    progbar.update(done)
    for i, (start, end) in enumerate(bounds):
        if i in finished:
            continue
        labels = np.arange(start, end) % num_classes
        images = model.generate(
            labels,
            num_steps=num_steps,
            sampler=sampler,
            seed=chunk_seed(seed, i),
            guidance_scale=guidance_scale,
            time_shift=time_shift,
            batch_size=batch_size,
        )
        files.save_npz(paths[i], images=images, labels=labels.astype("int64"))
        done += end - start
        progbar.update(done)
    return paths, {
        "chunks": num_chunks,
        "chunks_reused": len(finished),
        "chunks_generated": num_chunks - len(finished),
    }


def read_chunk(path):
    """`(images, labels)` of a chunk file: uint8 NHWC and int64."""
    with np.load(path) as data:
        return data["images"], data["labels"]


def iter_samples(chunk_paths):
    """Yields the uint8 NHWC images of each chunk, in order."""
    for path in chunk_paths:
        yield read_chunk(path)[0]


def write_samples_npz(
    path, chunk_paths, num_samples, image_shape, verbose=True
):
    """Streams the chunks into one ADM `.npz` (arr_0 images, arr_1 labels).

    Memory stays at one chunk; the file appears under `path` only once it
    is complete. A complete file already under `path` is kept.

    Args:
        path: string. The `.npz` to write.
        chunk_paths: list of chunk files, in order.
        num_samples: int >= 1. The samples the chunks hold in all.
        image_shape: tuple `(height, width, 3)`.
        verbose: bool. Say when a complete file is kept. Defaults to
            `True`.

    Returns:
        `path`.

    Raises:
        ValueError: the chunks do not hold `num_samples` samples.
    """
    num_samples = validation.check_positive_int(num_samples, "num_samples")
    expected = (num_samples, *image_shape)
    if os.path.isfile(path):
        try:
            if files.npz_headers(path).get("arr_0") == (expected, np.uint8):
                if verbose:
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
                np.lib.format.write_array_header_1_0(
                    f,
                    {
                        "descr": np.lib.format.dtype_to_descr(
                            np.dtype("uint8")
                        ),
                        "fortran_order": False,
                        "shape": expected,
                    },
                )
                for chunk in chunk_paths:
                    images, chunk_labels = read_chunk(chunk)
                    if tuple(images.shape[1:]) != tuple(image_shape):
                        raise ValueError(
                            f"{chunk} holds images of shape "
                            f"{images.shape[1:]}, expected {image_shape}."
                        )
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

    return file_utils.atomic_write(path, write)


# === All together ===


def generate_samples(
    model,
    output_dir,
    num_samples,
    num_classes=None,
    chunk_size=1000,
    sampler="heun",
    num_steps=32,
    guidance_scale=None,
    time_shift=1.0,
    seed=0,
    batch_size=64,
    model_digest=None,
    verbose=True,
):
    """Samples a model in resumable chunks and exports the ADM `.npz`.

    Writes `<output_dir>/chunks/` (`generate_chunks`) and
    `<output_dir>/samples_NxHxWx3.npz` (`write_samples_npz`). A rerun with
    the same settings reuses the finished chunks and gives the same
    samples.

    Args:
        model: a `DSDImageGenerator` (see `load_generator` for float32).
        output_dir: string. The output folder.
        num_samples, num_classes, chunk_size, sampler, num_steps,
            guidance_scale, time_shift, seed, batch_size, model_digest,
            verbose: as in `generate_chunks`.

    Returns:
        `(record, chunk_paths)`: `record` is a JSON-ready dict of the
        settings, the `.npz` path (`"samples"`), the timings and the chunk
        counts; `chunk_paths` the chunk files, for `iter_samples`.

    Example:

    ```python
    model = keras_dsd.evaluation.load_generator("dsd_digits.keras")
    record, chunks = keras_dsd.evaluation.generate_samples(
        model, "outputs/evaluate", num_samples=100, num_steps=16
    )
    print(record["samples"])  # outputs/evaluate/samples_100x32x32x3.npz
    ```
    """
    num_classes = check_sample_counts(model, num_samples, num_classes)
    network = model.inference_backbone
    image_shape = (network.image_size, network.image_size, 3)
    nfe = samplers.num_function_evaluations(sampler, num_steps)
    if guidance_scale is not None:
        nfe *= 2  # conditional and unconditional halves of one batch
    if verbose:
        print(
            f"keras_dsd {__version__} | backend {keras.backend.backend()} | "
            f"{num_samples} samples ({num_samples // num_classes} per "
            f"class x {num_classes}) | {sampler} {num_steps} steps "
            f"({nfe} NFE) | guidance {guidance_scale}"
        )
    start = time.time()
    chunk_paths, counts = generate_chunks(
        model,
        os.path.join(output_dir, "chunks"),
        num_samples,
        num_classes,
        chunk_size=chunk_size,
        sampler=sampler,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        time_shift=time_shift,
        seed=seed,
        batch_size=batch_size,
        model_digest=model_digest,
        verbose=verbose,
    )
    generation_seconds = time.time() - start
    height, width = image_shape[:2]
    samples_path = os.path.join(
        output_dir, f"samples_{num_samples}x{height}x{width}x3.npz"
    )
    write_samples_npz(
        samples_path, chunk_paths, num_samples, image_shape, verbose=verbose
    )
    if verbose:
        print(
            f"Wrote {samples_path} (arr_0: uint8 {num_samples}x"
            f"{height}x{width}x3, arr_1: labels)"
        )
    record = {
        "samples": os.path.abspath(samples_path),
        "num_samples": num_samples,
        "num_classes": num_classes,
        "samples_per_class": num_samples // num_classes,
        "image_shape": list(image_shape),
        "precision": keras.backend.standardize_dtype(network.compute_dtype),
        "sampler": sampler,
        "num_steps": num_steps,
        "nfe": nfe,
        "guidance_scale": guidance_scale,
        "time_shift": time_shift,
        "seed": seed,
        "generation_seconds": round(generation_seconds, 2),
        **counts,
    }
    return record, chunk_paths
