import keras
import numpy as np
import pytest

from keras_dsd.layers.patch_embedding import PatchEmbedding
from keras_dsd.layers.patch_embedding import patchify
from keras_dsd.layers.patch_embedding import unpatchify
from keras_dsd.testing import test_utils


def _images(batch=2, size=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, size, size, channels)).astype("float32")


def test_patchify_token_order_is_row_major_patches():
    images = _images()
    tokens = test_utils.to_numpy(patchify(images, 4))
    assert tokens.shape == (2, 4, 4 * 4 * 3)
    # Token r * cols + c is the (r, c) patch, flattened as (row, col, chan).
    for r in range(2):
        for c in range(2):
            patch = images[:, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4, :]
            np.testing.assert_array_equal(
                tokens[:, 2 * r + c], patch.reshape(2, -1)
            )


@pytest.mark.parametrize("patch_size", [1, 2, 4, 8])
def test_patchify_unpatchify_round_trip_is_exact(patch_size):
    images = _images()
    tokens = patchify(images, patch_size)
    restored = test_utils.to_numpy(unpatchify(tokens, patch_size, 8))
    np.testing.assert_array_equal(restored, images)


def test_unpatchify_other_channel_count():
    images = _images(channels=5)
    tokens = patchify(images, 2)
    restored = unpatchify(tokens, 2, 8, channels=5)
    np.testing.assert_array_equal(test_utils.to_numpy(restored), images)


def test_output_shape_and_compute_output_shape():
    layer = PatchEmbedding(patch_size=4, hidden_dim=16)
    outputs = layer(_images())
    assert tuple(outputs.shape) == (2, 4, 16)
    assert layer.compute_output_shape((None, 8, 8, 3)) == (None, 4, 16)


def test_equals_strided_convolution_in_numpy():
    # Independent reference: a convolution with kernel = stride = patch.
    images = _images()
    layer = PatchEmbedding(patch_size=4, hidden_dim=16)
    layer(images)
    test_utils.randomize_weights(layer)
    kernel, bias = layer.get_weights()
    kernel = kernel.reshape(4, 4, 3, 16)
    expected = np.zeros((2, 2, 2, 16), "float64")
    for r in range(2):
        for c in range(2):
            patch = images[:, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4, :]
            expected[:, r, c] = np.einsum("bijk,ijkd->bd", patch, kernel)
    expected = expected.reshape(2, 4, 16) + bias
    np.testing.assert_allclose(
        test_utils.to_numpy(layer(images)), expected, rtol=1e-5, atol=1e-5
    )


def test_has_only_projection_weights():
    layer = PatchEmbedding(patch_size=4, hidden_dim=16)
    layer(_images())
    shapes = sorted(tuple(w.shape) for w in layer.trainable_weights)
    assert shapes == [(16,), (48, 16)]


def test_config_round_trip():
    layer = PatchEmbedding(patch_size=4, hidden_dim=16, name="patches")
    images = _images()
    layer(images)
    restored = test_utils.assert_layer_config_round_trip(layer, images)
    assert restored.patch_size == 4 and restored.hidden_dim == 16
    assert restored.name == "patches"


@pytest.mark.parametrize("size", [(10, 8), (8, 6)])
def test_patch_size_not_dividing_raises(size):
    layer = PatchEmbedding(patch_size=4, hidden_dim=16)
    images = np.zeros((1, *size, 3), "float32")
    with pytest.raises(ValueError, match="not divisible by patch_size=4"):
        layer(images)


def test_symbolic_call():
    layer = PatchEmbedding(patch_size=4, hidden_dim=16)
    outputs = layer(keras.Input((8, 8, 3)))
    assert tuple(outputs.shape) == (None, 4, 16)
