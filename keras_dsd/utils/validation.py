"""Checks of user input that fail early with a message naming the argument.

They run on host (numpy) values before anything reaches a compiled program,
where a bad shape or label would otherwise surface as a backend stack trace
or, worse, be silently clamped.
"""

import numpy as np

from keras_dsd.backend import data


def _describe(array):
    return f"shape {tuple(array.shape)} and dtype {array.dtype}"


def to_numpy(value, name):
    try:
        import keras

        return np.asarray(keras.ops.convert_to_numpy(value))
    except Exception as error:  # noqa: BLE001
        raise ValueError(
            f"`{name}` must be an array or tensor; could not convert a "
            f"{type(value).__name__}: {error}"
        ) from None


def check_rgb_layout(array, name="images"):
    """Checks that a numpy array is a `(batch, height, width, 3)` batch."""
    if array.ndim != 4:
        hint = " Add a batch axis: images[None]." if array.ndim == 3 else ""
        raise ValueError(
            f"`{name}` must have rank 4, (batch, height, width, 3); got "
            f"{_describe(array)}.{hint}"
        )
    if array.shape[-1] != 3:
        raise ValueError(
            f"`{name}` must have 3 channels (RGB) in the last axis; got "
            f"{_describe(array)}. Grayscale images: repeat the channel, "
            "np.repeat(images, 3, axis=-1)."
        )


def check_pixel_values(array, name="images"):
    """Checks numeric, finite pixel values in `[0, 255]` (uint8 scale)."""
    if array.dtype.kind not in "uif":
        raise ValueError(
            f"`{name}` must be uint8 (or numbers in [0, 255]); got "
            f"{_describe(array)}."
        )
    if array.size:
        low, high = float(array.min()), float(array.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"`{name}` contains NaN or infinite values.")
        if low < 0 or high > 255:
            raise ValueError(
                f"`{name}` must hold values in [0, 255] (uint8 pixels); got "
                f"values in [{low:g}, {high:g}]. Images scaled to [-1, 1] "
                "or [0, 1] must be mapped back to [0, 255] first."
            )


def check_images(
    images, image_size=None, patch_size=None, name="images", taker="this model"
):
    """Checks a batch of RGB images; returns it as a numpy array.

    The one image check of the library: rank 4 `(batch, height, width, 3)`,
    integer images in `[0, 255]` (uint8 is the usual) or float images on the
    same scale, finite. With `image_size`, the images must be
    `image_size x image_size` (and `patch_size`, if given, must divide
    them); `taker` names what takes that size in the message. Without it,
    any size is accepted (metrics and feature extractors resize), but not
    an empty batch.
    """
    array = to_numpy(images, name)
    check_rgb_layout(array, name)
    height, width = array.shape[1:3]
    if image_size is None:
        if 0 in array.shape[:3]:
            raise ValueError(f"`{name}` is empty: {_describe(array)}.")
    elif (height, width) != (image_size, image_size):
        divides = patch_size is None or not (
            height % patch_size or width % patch_size
        )
        reason = (
            ""
            if divides
            else f", which patch_size={patch_size} does not divide"
        )
        raise ValueError(
            f"`{name}` has size {height}x{width}{reason}; {taker} takes "
            f"{image_size}x{image_size} images. Resize or crop them to "
            f"{image_size}x{image_size}."
        )
    check_pixel_values(array, name)
    return array


def check_labels(labels, num_classes, name="class_labels", allow_null=False):
    """Checks integer class ids in `[0, num_classes)`; returns int32 numpy.

    With `allow_null`, `num_classes` itself (the null class) is accepted.
    """
    array = to_numpy(labels, name)
    if array.ndim == 0:
        array = array[None]
    if array.ndim == 2 and array.shape[-1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(
            f"`{name}` must be a 1-D sequence of class ids; got "
            f"{_describe(array)}."
        )
    if array.size and array.dtype.kind not in "iu":
        if array.dtype.kind == "f" and np.all(array == np.round(array)):
            array = array.astype("int64")
        else:
            raise ValueError(
                f"`{name}` must hold integer class ids; got {_describe(array)}."
            )
    high = num_classes + 1 if allow_null else num_classes
    bad = array[(array < 0) | (array >= high)] if array.size else array
    if bad.size:
        raise ValueError(
            f"`{name}` has class id {int(bad[0])}, outside [0, {num_classes})"
            f" for this model's num_classes={num_classes}."
        )
    return array.astype("int32")


def check_latents(latents, latent_shape, name="latents"):
    array = to_numpy(latents, name)
    if array.ndim != 3 or tuple(array.shape[1:]) != tuple(latent_shape):
        raise ValueError(
            f"`{name}` must have shape (batch, {latent_shape[0]}, "
            f"{latent_shape[1]}); got {_describe(array)}."
        )
    if array.dtype.kind != "f":
        raise ValueError(f"`{name}` must be float; got {_describe(array)}.")
    if array.size and not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return array.astype("float32")


def check_not_empty(array, name):
    """Checks that a batch holds at least one element; returns it."""
    if len(array) == 0:
        raise ValueError(
            f"`{name}` is empty (shape {tuple(np.shape(array))}); expected at "
            "least one element."
        )
    return array


def check_positive_int(value, name):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < 1
    ):
        raise ValueError(f"`{name}` must be an int >= 1, got {name}={value!r}.")
    return int(value)


def check_choice(value, choices, name):
    if value not in choices:
        raise ValueError(
            f"Unknown {name}: {name}={value!r}. Expected one of "
            f"{list(choices)}."
        )
    return value


def check_training_data(x, y, image_size, patch_size, num_classes):
    """Checks `fit`'s input for a DSD model before any step runs.

    Numpy inputs are checked in full; a `tf.data.Dataset`, a
    `keras.utils.PyDataset` or a torch `DataLoader` by its first batch
    (`keras_dsd.backend.data.first_batch`); a plain Python generator is
    not checked, since peeking would consume it.
    """
    batch = data.first_batch(x, y)
    if batch is None:
        return
    images, labels = batch
    if batch is data.EMPTY or (images is not None and len(images) == 0):
        raise ValueError(
            f"DSDImageGenerator.fit got empty training data: `x` (a "
            f"{type(x).__name__}) holds no images; expected at least one "
            f"batch of (images, labels)."
        )
    check_images(images, image_size, patch_size)
    if labels is None:
        raise ValueError(
            "DSDImageGenerator.fit needs class labels: pass "
            '(images, labels) or {"images": ..., "labels": ...}.'
        )
    labels = check_labels(labels, num_classes, name="labels")
    if len(labels) != len(images):
        raise ValueError(
            f"`labels` has {len(labels)} entries for {len(images)} images."
        )
