"""Helpers shared by the `*_test.py` files. Test-only; not a public API.

- `TINY_CONFIG` / `tiny_backbone()`: the smallest useful `DSDBackbone`.
- `random_images()` / `random_labels()`: uint8 images and int labels.
- `randomize_weights()`: gives every weight a random value, so that
  zero-initialised heads and gates stop hiding differences between models.
- `assert_layer_config_round_trip()`: `from_config(get_config())` gives the
  same config and, once the weights are copied, the same outputs.
- `value_and_grad()`: the one backend-specific helper, a gradient of a
  scalar function for JAX, TensorFlow and PyTorch.
- `eager_loops()`: runs `keras.ops.fori_loop` as a Python loop, so that a
  test can count how often the loop body calls a function.
- `photo_like_image()`: a synthetic photo (gradients, soft blobs, noise),
  for image decoding and resizing tests and the input-pipeline benchmark.
- `image_folder_tree()`: a class-per-folder tree of such images, JPEG and
  PNG, for `ImageFolder`.
- `deterministic_generator()`: a `DSDImageGenerator` whose diffusion times
  and noise are fixed functions of each example's latent, so that training
  on a batch split in pieces (gradient accumulation, several devices) can be
  compared with training on the whole batch.
"""

import os

import keras
import numpy as np

from keras_dsd import backend

TINY_CONFIG = {
    "image_size": 8,
    "patch_size": 4,
    "latent_channels": 4,
    "hidden_dim": 16,
    "num_layers": 1,
    "num_heads": 2,
    "num_classes": 3,
}


def tiny_backbone(**overrides):
    """A `DSDBackbone` of `TINY_CONFIG` (8x8 images, 4 tokens of 4 channels)."""
    from keras_dsd.models.dsd.dsd_backbone import DSDBackbone

    return DSDBackbone(**{**TINY_CONFIG, **overrides})


def random_images(num_images, image_size=8, seed=0):
    """uint8 images `(num_images, image_size, image_size, 3)`."""
    rng = np.random.default_rng(seed)
    return rng.integers(
        0, 256, (num_images, image_size, image_size, 3), dtype="uint8"
    )


def random_labels(num_images, num_classes=3, seed=0):
    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, num_classes, (num_images,)).astype("int32")


def photo_like_image(
    height, width, rng, num_blobs=4, blob_size=0.02, noise=4.0
):
    """A uint8 `(height, width, 3)` image with photo-like statistics.

    Per-channel linear and bilinear gradients, `num_blobs` soft Gaussian
    blobs (squared radius `blob_size + 0.05 * u`, `u` uniform) and Gaussian
    pixel noise of std `noise`, drawn from the numpy generator `rng`.
    """
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.zeros((height, width, 3))
    for channel in range(3):
        a, b, c = rng.uniform(-1, 1, 3)
        image[..., channel] = 128 + 80 * (a * x + b * y + c * x * y)
    for _ in range(num_blobs):
        cy, cx, r = rng.uniform(0, 1, 3)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (blob_size + 0.05 * r))
        image += blob[..., None] * rng.uniform(-90, 90, 3)
    image += rng.normal(0, noise, image.shape)
    return np.clip(np.round(image), 0, 255).astype("uint8")


def image_folder_tree(
    root, classes=("bee", "ant", "cat"), per_class=4, size=(40, 50)
):
    """`root/<class>/<i>.<ext>` of photo-like images, alternating JPEG and
    PNG, seeded 0, 1, ... in order; returns `root` as a string."""
    from PIL import Image

    seed = 0
    for name in classes:
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            image = Image.fromarray(
                photo_like_image(*size, np.random.default_rng(seed))
            )
            seed += 1
            if i % 2:
                image.save(os.path.join(root, name, f"{i}.png"))
            else:
                image.save(os.path.join(root, name, f"{i}.jpg"), quality=90)
    return str(root)


def randomize_weights(layer, seed=0, stddev=0.3):
    """Assigns `N(0, stddev^2)` values to every weight of `layer`."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        value = rng.normal(0.0, stddev, tuple(weight.shape))
        weight.assign(
            value.astype(keras.backend.standardize_dtype(weight.dtype))
        )
    return layer


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def assert_layer_config_round_trip(layer, *inputs, atol=1e-6, **call_kwargs):
    """Rebuilds `layer` from its config and checks config and outputs.

    `layer` must already be built (called once on `inputs`). Its weights
    are randomised first, so that a zero-initialised layer cannot pass by
    outputting zeros from both copies.
    """
    config = layer.get_config()
    randomize_weights(layer, seed=123)
    restored = layer.__class__.from_config(config)
    assert restored.get_config() == config
    restored(*inputs, **call_kwargs)
    assert len(restored.weights) == len(layer.weights)
    restored.set_weights(layer.get_weights())
    expected = keras.tree.map_structure(to_numpy, layer(*inputs, **call_kwargs))
    actual = keras.tree.map_structure(
        to_numpy, restored(*inputs, **call_kwargs)
    )
    keras.tree.map_structure(
        lambda a, e: np.testing.assert_allclose(a, e, atol=atol),
        actual,
        expected,
    )
    return restored


# === Gradients (backend-specific parts in keras_dsd.backend) ===


def value_and_grad(fn, variables_or_tensor):
    """Value and gradient of a scalar function, as numpy.

    Args:
        fn: callable. With an array-like `variables_or_tensor`, called as
            `fn(tensor)`; with a list of `keras.Variable`s, called as `fn()`
            and reading those variables.
        variables_or_tensor: an array-like (numpy array or backend tensor),
            or a list of `keras.Variable`s.

    Returns:
        `(value, grad)`: a float and the gradient with the structure of the
        input (a list of arrays for a list of variables). A gradient that
        the backend reports as absent (the input is unused, or only reached
        through a stop-gradient) is returned as zeros.
    """
    is_variables = isinstance(variables_or_tensor, (list, tuple))
    if is_variables:
        variables = list(variables_or_tensor)
        shapes = [tuple(v.shape) for v in variables]
    else:
        tensor = keras.ops.convert_to_tensor(variables_or_tensor, "float32")
        shapes = [tuple(tensor.shape)]

    value, grads = backend.value_and_grad(
        fn,
        variables if is_variables else None,
        None if is_variables else tensor,
    )
    grads = [
        np.zeros(shape, "float32") if g is None else to_numpy(g)
        for g, shape in zip(grads, shapes)
    ]
    return float(to_numpy(value)), grads if is_variables else grads[0]


def eager_loops():
    """A context in which `keras.ops.fori_loop` bodies run once per
    iteration in Python (TensorFlow's eager `tf.while_loop` and PyTorch
    already do; JAX traces the body once unless jit is disabled)."""
    return backend.eager_loops()


def deterministic_generator(backbone, **kwargs):
    """A `DSDImageGenerator` without random draws in its training step.

    Each example's time and noise are functions of its (stop-gradient)
    online latent, so they do not depend on the batch it sits in, on the
    replica that runs it, or on the backend's random streams. The times
    differ between examples: `0.2 + 0.6 * sigmoid(3 * mean of channel 0)`
    (the mean over all channels would be 0 for every example, since the
    latent LayerNorm centres each token).
    """
    from keras import ops

    from keras_dsd.models.dsd.dsd_image_generator import DSDImageGenerator

    class DeterministicGenerator(DSDImageGenerator):
        def _sample_time(self, latents):
            mean = ops.mean(ops.stop_gradient(latents)[:, :, 0], axis=1)
            # In (0.2, 0.8): weights w(t) <= 25, so that float rounding
            # differences between batch splits stay small.
            return 0.2 + 0.6 * ops.sigmoid(3.0 * mean)

        def _sample_noise(self, latents):
            return ops.sin(7.0 * ops.stop_gradient(latents) + 1.0)

    return DeterministicGenerator(backbone, **kwargs)
