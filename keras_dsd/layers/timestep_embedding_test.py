import math

import keras
import numpy as np

from keras_dsd.layers.timestep_embedding import TimestepEmbedding
from keras_dsd.layers.timestep_embedding import sinusoidal_embedding
from keras_dsd.testing import test_utils


def test_sinusoidal_embedding_matches_dit_frequencies():
    # DiT's TimestepEmbedder on integer steps 1000 * t: cosines then sines
    # with frequencies exp(-log(10000) * i / half).
    t = np.array([0.0, 0.25, 0.5, 1.0], "float32")
    dim = 8
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = (1000.0 * t.astype("float64"))[:, None] * freqs[None, :]
    expected = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    actual = test_utils.to_numpy(sinusoidal_embedding(t, dim))
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, atol=2e-4)


def test_sinusoidal_embedding_at_zero_and_bounds():
    features = test_utils.to_numpy(
        sinusoidal_embedding(np.linspace(0, 1, 11), 16)
    )
    np.testing.assert_allclose(features[0], [1.0] * 8 + [0.0] * 8)
    assert np.all(np.abs(features) <= 1.0 + 1e-6)


def test_output_shape_and_distinct_times():
    layer = TimestepEmbedding(hidden_dim=16, frequency_dim=32)
    outputs = test_utils.to_numpy(layer(np.array([0.0, 0.5, 1.0])))
    assert outputs.shape == (3, 16)
    assert layer.compute_output_shape((3,)) == (3, 16)
    assert not np.allclose(outputs[0], outputs[1])
    assert not np.allclose(outputs[1], outputs[2])


def test_weights():
    layer = TimestepEmbedding(hidden_dim=16, frequency_dim=32)
    layer(np.array([0.5]))
    shapes = sorted(tuple(w.shape) for w in layer.trainable_weights)
    assert shapes == [(16,), (16,), (16, 16), (32, 16)]


def test_config_round_trip():
    layer = TimestepEmbedding(hidden_dim=16, frequency_dim=32, name="time")
    times = np.array([0.1, 0.9], "float32")
    layer(times)
    restored = test_utils.assert_layer_config_round_trip(layer, times)
    assert restored.frequency_dim == 32


def test_mixed_precision_sinusoid_in_float32():
    # Two times 1e-3 apart are distinguishable although bfloat16 could not
    # represent 1000 * t that finely near t = 1.
    layer = TimestepEmbedding(
        hidden_dim=16, frequency_dim=32, dtype="mixed_bfloat16"
    )
    outputs = test_utils.to_numpy(
        keras.ops.cast(layer(np.array([0.998, 0.999])), "float32")
    )
    assert all(w.dtype == "float32" for w in layer.weights)
    assert np.all(np.isfinite(outputs))
    assert not np.array_equal(outputs[0], outputs[1])
