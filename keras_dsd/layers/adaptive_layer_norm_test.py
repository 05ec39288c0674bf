import numpy as np

from keras_dsd.layers.adaptive_layer_norm import AdaptiveLayerNorm
from keras_dsd.layers.adaptive_layer_norm import FinalLayer
from keras_dsd.testing import test_utils


def _inputs(batch=2, tokens=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = (3.0 + 2.0 * rng.normal(size=(batch, tokens, dim))).astype("float32")
    c = rng.normal(size=(batch, dim)).astype("float32")
    return x, c


def _layer_norm(x, epsilon=1e-6):
    x = x.astype("float64")
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def test_zero_init_is_plain_layer_norm():
    x, c = _inputs()
    layer = AdaptiveLayerNorm(16)
    outputs = test_utils.to_numpy(layer(x, c))
    assert outputs.shape == x.shape
    np.testing.assert_allclose(outputs, _layer_norm(x), atol=1e-5)


def test_modulation_formula():
    x, c = _inputs()
    layer = AdaptiveLayerNorm(16)
    layer(x, c)
    test_utils.randomize_weights(layer)
    kernel, bias = layer.modulation.get_weights()
    mods = _silu(c.astype("float64")) @ kernel + bias
    shift, scale = mods[:, :16], mods[:, 16:]
    expected = _layer_norm(x) * (1 + scale[:, None]) + shift[:, None]
    np.testing.assert_allclose(
        test_utils.to_numpy(layer(x, c)), expected, rtol=1e-4, atol=1e-4
    )


def test_extra_modulations_are_returned_as_gates():
    x, c = _inputs()
    layer = AdaptiveLayerNorm(16, num_modulations=4)
    normed, gate_a, gate_b = layer(x, c)
    np.testing.assert_allclose(
        test_utils.to_numpy(normed), _layer_norm(x), atol=1e-5
    )
    for gate in (gate_a, gate_b):
        assert tuple(gate.shape) == (2, 1, 16)
        # Zero-initialised modulation: adaLN-Zero gates start at zero.
        np.testing.assert_array_equal(test_utils.to_numpy(gate), 0.0)


def test_norm_has_no_affine_weights():
    x, c = _inputs()
    layer = AdaptiveLayerNorm(16, num_modulations=3)
    layer(x, c)
    shapes = sorted(tuple(w.shape) for w in layer.weights)
    assert shapes == [(16, 48), (48,)]


def test_adaptive_layer_norm_config_round_trip():
    x, c = _inputs()
    layer = AdaptiveLayerNorm(16, num_modulations=3, epsilon=1e-5)
    layer(x, c)
    restored = test_utils.assert_layer_config_round_trip(layer, x, c)
    assert restored.num_modulations == 3 and restored.epsilon == 1e-5


def test_final_layer_zero_init_outputs_zeros():
    x, c = _inputs()
    layer = FinalLayer(16, 12)
    outputs = test_utils.to_numpy(layer(x, c))
    assert outputs.shape == (2, 4, 12)
    assert layer.compute_output_shape((2, 4, 16)) == (2, 4, 12)
    np.testing.assert_array_equal(outputs, 0.0)


def test_final_layer_without_zero_init_is_layer_norm_then_dense():
    x, c = _inputs()
    layer = FinalLayer(16, 12, zero_init=False)
    outputs = test_utils.to_numpy(layer(x, c))
    assert np.abs(outputs).max() > 1e-2
    kernel, bias = layer.projection.get_weights()
    # The adaLN part is still zero-initialised: a plain LayerNorm.
    expected = _layer_norm(x) @ kernel + bias
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4)


def test_final_layer_config_round_trip():
    x, c = _inputs()
    layer = FinalLayer(16, 12, zero_init=False, name="head")
    layer(x, c)
    restored = test_utils.assert_layer_config_round_trip(layer, x, c, atol=1e-5)
    assert restored.zero_init is False and restored.output_dim == 12
