import keras
import numpy as np
import pytest

from keras_dsd.layers.dense import Dense
from keras_dsd.testing import test_utils


def _layer_and_input(activation=None, units=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 3, 5)).astype("float32")
    layer = Dense(units, activation=activation)
    layer.build(x.shape)
    layer.kernel.assign(rng.normal(size=(5, units)).astype("float32"))
    layer.bias.assign(rng.normal(size=(units,)).astype("float32"))
    return layer, x


def test_output_is_x_times_kernel_plus_bias_through_the_activation():
    layer, x = _layer_and_input(activation="relu")
    kernel, bias = layer.get_weights()
    expected = np.maximum(x.astype("float64") @ kernel + bias, 0.0)
    np.testing.assert_allclose(
        test_utils.to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5
    )


# Fewer and more outputs than inputs (5): PyTorch's CPU path forms the
# kernel gradient in two different ways.
@pytest.mark.parametrize("units", [4, 8])
def test_gradients_are_the_closed_forms(units):
    layer, x = _layer_and_input(units=units)
    kernel, _ = layer.get_weights()
    weights = np.arange(6 * units, dtype="float32").reshape(2, 3, units)
    weights /= 10.0

    def loss():
        return keras.ops.sum(keras.ops.multiply(layer(x), weights))

    _, (grad_kernel, grad_bias) = test_utils.value_and_grad(
        loss, [layer.kernel, layer.bias]
    )
    # d/dK sum(W * (x K + b)) = x^T W over the flattened tokens; d/db =
    # the column sums of W.
    flat_x = x.reshape(-1, 5).astype("float64")
    flat_w = weights.reshape(-1, units).astype("float64")
    np.testing.assert_allclose(grad_kernel, flat_x.T @ flat_w, rtol=1e-5)
    np.testing.assert_allclose(grad_bias, flat_w.sum(0), rtol=1e-6)

    _, grad_x = test_utils.value_and_grad(
        lambda t: keras.ops.sum(keras.ops.multiply(layer(t), weights)), x
    )
    np.testing.assert_allclose(
        grad_x, (flat_w @ kernel.T).reshape(x.shape), rtol=1e-5, atol=1e-6
    )


def test_weights_are_interchangeable_with_keras_dense():
    layer, x = _layer_and_input(activation="gelu")
    reference = keras.layers.Dense(4, activation="gelu")
    reference.build(x.shape)
    assert [w.path.split("/")[-1] for w in reference.weights] == [
        w.path.split("/")[-1] for w in layer.weights
    ]
    reference.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        test_utils.to_numpy(layer(x)),
        test_utils.to_numpy(reference(x)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_lora_adds_the_scaled_low_rank_product():
    layer, x = _layer_and_input()
    kernel, bias = layer.get_weights()
    layer.enable_lora(2, lora_alpha=4.0)
    a = np.full((5, 2), 0.5, "float32")
    b = np.arange(8, dtype="float32").reshape(2, 4) / 8.0
    layer.lora_kernel_a.assign(a)
    layer.lora_kernel_b.assign(b)
    # Keras scales the low-rank update by lora_alpha / rank = 2.
    expected = x.astype("float64") @ (kernel + 2.0 * a @ b) + bias
    np.testing.assert_allclose(
        test_utils.to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5
    )


def test_int8_quantized_layer_runs_keras_quantized_call():
    layer, x = _layer_and_input()
    float_outputs = x.astype("float64") @ layer.get_weights()[0]
    float_outputs += layer.get_weights()[1]
    layer.quantize("int8")
    assert layer.quantization_mode == "int8"
    outputs = test_utils.to_numpy(layer(x))
    # int8 weights (per output channel) and inputs: ~1 % of the output scale.
    scale = np.abs(float_outputs).max()
    np.testing.assert_allclose(outputs, float_outputs, atol=0.03 * scale)


def test_config_round_trip():
    layer = Dense(6, activation="silu", name="projection")
    restored = Dense.from_config(layer.get_config())
    assert restored.units == 6
    assert restored.name == "projection"
    inputs = np.ones((2, 4), "float32")
    built = Dense(3)
    built(inputs)
    test_utils.assert_layer_config_round_trip(built, inputs)


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="PyTorch's oneDNN path"
)
def test_torch_float32_cpu_product_runs_through_onednn(monkeypatch):
    import torch

    from keras_dsd.backend import torch_backend

    if torch_backend._LINEAR is None:
        pytest.skip("this torch has no oneDNN linear kernel")
    calls = []
    original = torch_backend._OneDNNMatmul.apply
    monkeypatch.setattr(
        torch_backend._OneDNNMatmul,
        "apply",
        lambda *args: calls.append(1) or original(*args),
    )
    layer, x = _layer_and_input()
    layer(x)
    assert calls == [1]
    # Half precision goes to keras.ops.matmul and keras.ops.add.
    half = torch_backend.matmul(
        torch.ones((2, 5), dtype=torch.bfloat16),
        torch.ones((5, 4), dtype=torch.bfloat16),
        torch.full((4,), 0.5, dtype=torch.bfloat16),
    )
    assert calls == [1]
    np.testing.assert_array_equal(half.float().numpy(), np.full((2, 4), 5.5))
    # An empty batch too (oneDNN refuses one).
    empty = layer(np.zeros((0, 5), "float32"))
    assert tuple(empty.shape) == (0, 4)
    assert calls == [1]


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="PyTorch's oneDNN path"
)
def test_torch_rows_match_numpy_whatever_the_batch_size():
    # The oneDNN linear kernel on 1, 2, 32 and 64 rows against float64
    # numpy. On some processors the rows agree to the bit whatever their
    # number; on a Zen 2 1 or 2 rows differ from the same rows among 64 by
    # up to 1.4e-6, so the bound is float32 rounding, not bitwise equality.
    from keras_dsd.backend import torch_backend

    if torch_backend._LINEAR is None:
        pytest.skip("this torch has no oneDNN linear kernel")
    rng = np.random.default_rng(0)
    layer = Dense(128)
    x = rng.normal(size=(64, 256)).astype("float32")
    layer.build(x.shape)
    kernel = test_utils.to_numpy(layer.kernel).astype("float64")
    bias = test_utils.to_numpy(layer.bias).astype("float64")
    expected = x.astype("float64") @ kernel + bias
    # |x| |kernel| summed over 256 terms is about 13 here: float32 rounding
    # moves such a sum by about 1e-6; a wrong row or column is off by ~1.
    for rows in (1, 2, 32, 64):
        np.testing.assert_allclose(
            test_utils.to_numpy(layer(x[:rows])),
            expected[:rows],
            atol=1e-5,
            rtol=0,
        )
