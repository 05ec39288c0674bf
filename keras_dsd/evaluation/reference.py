"""Reference images and their statistics: checking, reading, writing.

A reference is one of:

- a folder of images (`keras_dsd.datasets.IMAGE_EXTENSIONS`), all of one
  size;
- an `.npz` with uint8 NHWC images under `arr_0`, the layout of the ADM
  evaluator (guided-diffusion's `evaluator.py`);
- a statistics `.npz` written by `write_reference_stats`: the Fréchet
  mean and covariance of the reference's features, per extractor.
"""

import os
import time
import warnings
import zipfile

import numpy as np

from keras_dsd.datasets import IMAGE_EXTENSIONS
from keras_dsd.evaluation import files
from keras_dsd.evaluation.metric_set import FRECHET_METRICS
from keras_dsd.utils import validation

# The Fréchet distance needs a covariance: at least two images.
MIN_REFERENCE_IMAGES = 2
_STATS_WRITER = "write_reference_stats (evaluate.py --write-reference-stats)"


def _reference_error(path, message):
    return ValueError(f"Reference {path!r}: {message}")


def inspect_reference(path, metrics=None, write_stats=False):
    """Checks a reference's layout without loading its images.

    Runs in seconds on any size of reference, so that a wrong layout fails
    before hours of sampling, with a message that says how to fix it.

    Args:
        path: string. A folder of images, an `.npz` of uint8 NHWC images
            under `arr_0`, or a statistics `.npz`.
        metrics: list of names from `keras_dsd.evaluation.METRICS`, or
            `None`. When given, also checks that the reference serves them:
            a statistics file must hold the statistics of each Fréchet
            metric's extractor, and cannot serve precision-recall.
        write_stats: bool. Whether statistics will be written from the
            reference, which then must hold images. Defaults to `False`.

    Returns:
        A dict: `"kind"` (`"images"` or `"stats"`), `"format"`
        (`"folder"` or `"npz"`) and, for images, `"num_images"`,
        `"image_shape"` and (folders) `"files"`; `"note"` when something
        in the file is ignored.

    Raises:
        ValueError: the reference is missing, empty, has fewer than 2
            images or another layout, or does not serve `metrics`.
    """
    info = _inspect_layout(path)
    if info["kind"] == "images" and info["num_images"] < MIN_REFERENCE_IMAGES:
        raise _reference_error(
            path,
            f"holds {info['num_images']} image(s); at least "
            f"{MIN_REFERENCE_IMAGES} are needed.",
        )
    if info["kind"] == "stats":
        if metrics is not None and "precision-recall" in metrics:
            raise _reference_error(
                path,
                "precision-recall needs reference images (an image "
                "folder or an arr_0 .npz), not statistics.",
            )
        if write_stats:
            raise _reference_error(
                path,
                "is a statistics file already; "
                "--write-reference-stats needs reference images.",
            )
        for metric in metrics or ():
            if metric in FRECHET_METRICS:
                read_reference_stats(path, FRECHET_METRICS[metric][1])
    return info


def _inspect_layout(path):
    if os.path.isdir(path):
        names = sorted(
            name
            for name in os.listdir(path)
            if name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not names:
            raise _reference_error(
                path,
                f"the folder holds no image files "
                f"({', '.join(IMAGE_EXTENSIONS)}).",
            )
        from PIL import Image

        with Image.open(os.path.join(path, names[0])) as image:
            width, height = image.size
        return {
            "kind": "images",
            "format": "folder",
            "num_images": len(names),
            "image_shape": (height, width, 3),
            "files": [os.path.join(path, name) for name in names],
        }
    if not os.path.isfile(path):
        raise _reference_error(path, "no such file or folder.")
    if not zipfile.is_zipfile(path):
        raise _reference_error(
            path,
            "not an .npz file (nor a folder of images). Expected an "
            ".npz with uint8 NHWC images under 'arr_0' (the ADM evaluator "
            f"layout) or statistics written by {_STATS_WRITER}.",
        )
    headers = files.npz_headers(path)
    if "arr_0" in headers:
        return _inspect_images_npz(path, headers)
    if any(key == "mu" or key.startswith("mu_") for key in headers):
        return {"kind": "stats", "format": "npz"}
    raise _reference_error(
        path,
        f"the .npz has neither images under 'arr_0' nor statistics "
        f"('mu'/'sigma'); its keys are {sorted(headers)}. Expected uint8 "
        "NHWC images under 'arr_0' (the ADM evaluator layout) or a file "
        f"written by {_STATS_WRITER}.",
    )


def _inspect_images_npz(path, headers):
    shape, dtype = headers["arr_0"]
    layout = (
        "Reference images must be uint8 NHWC (N, height, width, 3) "
        "under 'arr_0', the ADM evaluator layout"
    )
    if len(shape) != 4:
        raise _reference_error(
            path, f"{layout}; 'arr_0' has shape {shape} (rank {len(shape)})."
        )
    if shape[-1] != 3:
        hint = ""
        if shape[1] == 3:
            hint = (
                " It looks like NCHW: convert with "
                "images.transpose(0, 2, 3, 1)."
            )
        elif shape[-1] == 1:
            hint = (
                " Grayscale: repeat the channel, np.repeat(images, 3, axis=-1)."
            )
        raise _reference_error(
            path,
            f"{layout}; 'arr_0' has shape {shape}, whose last axis "
            f"is not 3 channels.{hint}",
        )
    if dtype != np.uint8:
        raise _reference_error(
            path,
            f"{layout}; 'arr_0' has dtype {dtype}. Convert "
            "[0, 255] values with np.clip(np.round(x), 0, 255)"
            ".astype('uint8') (map [-1, 1] images to [0, 255] first).",
        )
    info = {
        "kind": "images",
        "format": "npz",
        "num_images": shape[0],
        "image_shape": tuple(shape[1:]),
    }
    if "mu" in headers:
        info["note"] = (
            "The file's own 'mu'/'sigma' (e.g. the ADM evaluator's "
            "Inception statistics from the reference TF graph) are not "
            "used: statistics are recomputed from 'arr_0' with this "
            "library's networks."
        )
    return info


def iter_reference_images(path, info, batch_size, max_images=None):
    """Yields the reference images in uint8 NHWC batches, in file order.

    Args:
        path: string. The reference (a folder or an `arr_0` `.npz`).
        info: dict. What `inspect_reference(path)` returned.
        batch_size: int. Images per batch.
        max_images: int or `None`. Read only the first `max_images`.
            Defaults to all.

    Yields:
        uint8 arrays `(n, height, width, 3)`, `n <= batch_size`.

    Raises:
        ValueError: a folder's image has another size than the first.
    """
    batch_size = validation.check_positive_int(batch_size, "batch_size")
    if info["kind"] != "images":
        raise _reference_error(path, "holds statistics, not images.")
    total = info["num_images"]
    if max_images is not None:
        total = min(
            total, validation.check_positive_int(max_images, "max_images")
        )
    if info["format"] == "npz":
        with np.load(path) as data:
            images = data["arr_0"]
        for start in range(0, total, batch_size):
            yield images[start : min(start + batch_size, total)]
        return
    from PIL import Image

    shape = info["image_shape"]
    paths = info["files"][:total]
    for start in range(0, total, batch_size):
        batch = []
        for file_path in paths[start : start + batch_size]:
            with Image.open(file_path) as image:
                array = np.asarray(image.convert("RGB"))
            if array.shape != shape:
                raise _reference_error(
                    path,
                    f"{os.path.basename(file_path)} is "
                    f"{array.shape[1]}x{array.shape[0]} but "
                    f"{os.path.basename(paths[0])} is {shape[1]}x{shape[0]}; "
                    "all reference images must have the same size.",
                )
            batch.append(array)
        yield np.stack(batch).astype("uint8")


def read_reference_stats(path, extractor_name):
    """Reads the Fréchet statistics of one extractor from a statistics file.

    Reads the keys of `write_reference_stats` (`mu_<extractor>`,
    `sigma_<extractor>`) and plain `mu`/`sigma`, which are used when
    labelled with `feature_extractor` = `extractor_name`, or, with a
    warning, when unlabelled.

    Args:
        path: string. A statistics `.npz`.
        extractor_name: string. `"EffNetLite0"` or `"InceptionV3"`.

    Returns:
        `(mu, sigma)`, numpy arrays `(d,)` and `(d, d)`.

    Raises:
        ValueError: the file has no statistics of `extractor_name`.
    """
    with np.load(path) as data:
        keys = set(data.files)
        if f"mu_{extractor_name}" in keys:
            return (
                data[f"mu_{extractor_name}"],
                data[f"sigma_{extractor_name}"],
            )
        if "mu" in keys and "sigma" in keys:
            labelled = (
                str(data["feature_extractor"])
                if "feature_extractor" in keys
                else None
            )
            if labelled is None:
                warnings.warn(
                    f"Reference {path!r} has unlabelled statistics "
                    f"'mu'/'sigma'; assuming they are {extractor_name} "
                    "features.",
                    UserWarning,
                    stacklevel=2,
                )
                return data["mu"], data["sigma"]
            if labelled == extractor_name:
                return data["mu"], data["sigma"]
        available = sorted(k[3:] for k in keys if k.startswith("mu_"))
        if "feature_extractor" in keys:
            available.append(str(data["feature_extractor"]))
    raise _reference_error(
        path,
        f"the statistics file has no {extractor_name} statistics "
        f"(it has: {available}). Write them with {_STATS_WRITER} and the "
        "matching metrics.",
    )


def write_reference_stats(path, statistics, num_images, verbose=True):
    """Writes Fréchet reference statistics to an `.npz`, atomically.

    Keys: `mu_<extractor>` and `sigma_<extractor>` per extractor, and
    `num_images`. With one extractor, also `mu`, `sigma` and
    `feature_extractor` (its name), the layout other tools read.

    Args:
        path: string. The `.npz` to write.
        statistics: dict `{extractor name: (mu, sigma)}`, e.g.
            `MetricSet.reference_statistics()`.
        num_images: int. The number of images the statistics are of.
        verbose: bool. Print what was written. Defaults to `True`.

    Returns:
        `path`.
    """
    if not statistics:
        raise ValueError("`statistics` is empty: nothing to write.")
    arrays = {"num_images": np.asarray(num_images, "int64")}
    for extractor_name, (mu, sigma) in statistics.items():
        arrays[f"mu_{extractor_name}"] = mu
        arrays[f"sigma_{extractor_name}"] = sigma
    if len(statistics) == 1:
        ((extractor_name, (mu, sigma)),) = statistics.items()
        arrays.update(
            mu=mu, sigma=sigma, feature_extractor=np.asarray(extractor_name)
        )
    files.save_npz(path, **arrays)
    if verbose:
        print(
            f"Wrote reference statistics ({', '.join(statistics)}) of "
            f"{num_images} images to {path}"
        )
    return path


def score_reference(
    metric_set,
    path,
    info,
    batch_size=1024,
    max_images=None,
    stats_path=None,
    verbose=True,
):
    """Feeds a reference to a `MetricSet`: its images or its statistics.

    Args:
        metric_set: a `keras_dsd.evaluation.MetricSet`.
        path: string. The reference.
        info: dict. What `inspect_reference(path)` returned.
        batch_size: int. Images read per batch. Defaults to `1024`.
        max_images: int or `None`. Use only the first `max_images` images.
            Defaults to all.
        stats_path: string or `None`. Also write the reference's Fréchet
            statistics there (`write_reference_stats`).
        verbose: bool. Print what was read. Defaults to `True`.

    Returns:
        The number of reference images read, or `None` when none were
        (a statistics file, or no metric needs the reference).
    """
    if info["kind"] == "stats":
        metric_set.set_reference_statistics(
            {
                extractor: read_reference_stats(path, extractor)
                for extractor in metric_set.extractor_of.values()
            }
        )
        return None
    if not metric_set.needs_reference_images:
        return None
    start = time.time()
    num_images = 0
    for images in iter_reference_images(path, info, batch_size, max_images):
        metric_set.update_reference(images)
        num_images += len(images)
    if verbose:
        print(
            f"Reference: {num_images} images from {path} "
            f"({time.time() - start:.1f} s)"
        )
    if stats_path and metric_set.frechet:
        write_reference_stats(
            stats_path,
            metric_set.reference_statistics(),
            num_images,
            verbose=verbose,
        )
    return num_images
