import numpy as np
import pytest

from keras_dsd.layers.transformer_block import DSDTransformerBlock
from keras_dsd.layers.transformer_block import SelfAttention
from keras_dsd.testing import test_utils


def _inputs(batch=2, tokens=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, tokens, dim)).astype("float32")
    c = rng.normal(size=(batch, dim)).astype("float32")
    return x, c


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def test_self_attention_shape_and_numpy_reference():
    x, _ = _inputs()
    layer = SelfAttention(16, num_heads=2)
    outputs = test_utils.to_numpy(layer(x))
    assert outputs.shape == (2, 4, 16)
    assert layer.compute_output_shape((2, 4, 16)) == (2, 4, 16)

    qkv_kernel, qkv_bias = layer.qkv.get_weights()
    out_kernel, out_bias = layer.output_projection.get_weights()
    qkv = x.astype("float64") @ qkv_kernel + qkv_bias
    # (B, N, 3, heads, head_dim): query, key and value, each split by head.
    qkv = qkv.reshape(2, 4, 3, 2, 8)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    weights = _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(8))
    attended = (weights @ v).transpose(0, 2, 1, 3).reshape(2, 4, 16)
    expected = attended @ out_kernel + out_bias
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5)


def test_self_attention_is_permutation_equivariant():
    x, _ = _inputs()
    layer = SelfAttention(16, num_heads=4)
    permutation = np.array([2, 0, 3, 1])
    outputs = test_utils.to_numpy(layer(x))
    permuted = test_utils.to_numpy(layer(x[:, permutation]))
    np.testing.assert_allclose(permuted, outputs[:, permutation], atol=1e-5)


def test_self_attention_heads_must_divide_width():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        SelfAttention(18, num_heads=4)


def test_self_attention_config_round_trip():
    x, _ = _inputs()
    layer = SelfAttention(16, num_heads=4, name="attention")
    layer(x)
    restored = test_utils.assert_layer_config_round_trip(layer, x, atol=1e-5)
    assert restored.num_heads == 4


def test_fresh_block_is_identity():
    x, c = _inputs()
    block = DSDTransformerBlock(16, num_heads=2)
    outputs = test_utils.to_numpy(block(x, c))
    assert outputs.shape == (2, 4, 16)
    assert block.compute_output_shape((2, 4, 16), (2, 16)) == (2, 4, 16)
    np.testing.assert_array_equal(outputs, x)


def test_block_with_open_gates_is_not_identity():
    x, c = _inputs()
    block = DSDTransformerBlock(16, num_heads=2)
    block(x, c)
    test_utils.randomize_weights(block)
    outputs = test_utils.to_numpy(block(x, c))
    assert np.all(np.isfinite(outputs))
    assert np.abs(outputs - x).max() > 1e-2
    # The conditioning changes the output.
    other = test_utils.to_numpy(block(x, c[::-1]))
    assert np.abs(outputs - other).max() > 1e-3


def test_block_mlp_width():
    x, c = _inputs()
    block = DSDTransformerBlock(16, num_heads=2, mlp_ratio=2.0)
    block(x, c)
    assert tuple(block.mlp_hidden.kernel.shape) == (16, 32)
    assert tuple(block.mlp_output.kernel.shape) == (32, 16)


def test_block_heads_must_divide_width():
    x = np.zeros((2, 4, 18), "float32")
    c = np.zeros((2, 18), "float32")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        DSDTransformerBlock(18, num_heads=4)(x, c)


def test_block_config_round_trip():
    x, c = _inputs()
    block = DSDTransformerBlock(16, num_heads=2, mlp_ratio=2.0, name="blk")
    block(x, c)
    restored = test_utils.assert_layer_config_round_trip(block, x, c, atol=1e-5)
    assert restored.mlp_ratio == 2.0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_backend_attention_matches_numpy(dtype):
    # keras_dsd.backend.dot_product_attention (heads-first on JAX's CPU,
    # PyTorch's scaled_dot_product_attention on heads-first views,
    # keras.ops.dot_product_attention elsewhere) against a float64 numpy
    # softmax attention on (B, N, heads, head_dim) tensors.
    import keras

    from keras_dsd import backend

    rng = np.random.default_rng(3)
    q, k, v = (rng.normal(size=(2, 5, 3, 4)) for _ in range(3))
    outputs = backend.dot_product_attention(
        *(keras.ops.convert_to_tensor(a, dtype) for a in (q, k, v))
    )
    assert keras.backend.standardize_dtype(outputs.dtype) == dtype
    qh, kh, vh = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    weights = _softmax(qh @ kh.transpose(0, 1, 3, 2) / 2.0)
    expected = (weights @ vh).transpose(0, 2, 1, 3)
    tolerance = 1e-5 if dtype == "float32" else 3e-2
    np.testing.assert_allclose(
        test_utils.to_numpy(keras.ops.cast(outputs, "float32")),
        expected,
        atol=tolerance,
        rtol=tolerance,
    )


def test_backend_attention_gradients_match_closed_form():
    # d/d(q, k, v) of sum(attention(q, k, v) * g) against the softmax
    # attention's closed-form gradients in float64 numpy, per head:
    # P = softmax(q k^T / s), dV = P^T g, dP = g v^T,
    # dS = P * (dP - rowsum(dP * P)), dQ = dS k / s, dK = dS^T q / s.
    import keras

    from keras_dsd import backend

    rng = np.random.default_rng(5)
    qkv = rng.normal(size=(3, 2, 6, 2, 4))  # (q/k/v, B, N, heads, head_dim)
    g = rng.normal(size=(2, 6, 2, 4))

    def loss(x):
        out = backend.dot_product_attention(x[0], x[1], x[2])
        return keras.ops.sum(out * keras.ops.convert_to_tensor(g, "float32"))

    _, grad = test_utils.value_and_grad(loss, qkv)
    q, k, v = (a.transpose(0, 2, 1, 3) for a in qkv)  # heads-first
    gh = g.transpose(0, 2, 1, 3)
    s = np.sqrt(4.0)
    p = _softmax(q @ k.transpose(0, 1, 3, 2) / s)
    d_v = p.transpose(0, 1, 3, 2) @ gh
    d_p = gh @ v.transpose(0, 1, 3, 2)
    d_s = p * (d_p - (d_p * p).sum(-1, keepdims=True))
    d_q = d_s @ k / s
    d_k = d_s.transpose(0, 1, 3, 2) @ q / s
    expected = np.stack([d_q, d_k, d_v]).transpose(0, 1, 3, 2, 4)
    np.testing.assert_allclose(grad, expected, atol=2e-5, rtol=1e-4)
