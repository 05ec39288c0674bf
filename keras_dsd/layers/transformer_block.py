import keras
from keras import ops

from keras_dsd import backend
from keras_dsd.layers.adaptive_layer_norm import AdaptiveLayerNorm
from keras_dsd.layers.dense import Dense


@keras.saving.register_keras_serializable(package="keras_dsd")
class SelfAttention(keras.layers.Layer):
    """Multi-head self-attention on `(B, N, D)` tokens.

    Uses `keras_dsd.backend.dot_product_attention`: the fused kernels each
    backend offers, as `keras.ops.dot_product_attention` dispatches to
    them (on PyTorch without Keras' copies, on JAX's CPU in a heads-first
    form that XLA runs faster).

    Args:
        hidden_dim: int. Token width; must be divisible by `num_heads`.
        num_heads: int. Number of attention heads.
    """

    def __init__(self, hidden_dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(
                f"SelfAttention: hidden_dim={hidden_dim} is not divisible by "
                f"num_heads={num_heads}."
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads

    def build(self, input_shape):
        self.qkv = Dense(
            3 * self.hidden_dim, dtype=self.dtype_policy, name="qkv"
        )
        self.qkv.build(input_shape)
        self.output_projection = Dense(
            self.hidden_dim, dtype=self.dtype_policy, name="output_projection"
        )
        self.output_projection.build(input_shape)

    def call(self, tokens):
        num_tokens = tokens.shape[1]
        head_dim = self.hidden_dim // self.num_heads
        qkv = ops.reshape(
            self.qkv(tokens), (-1, num_tokens, 3, self.num_heads, head_dim)
        )
        # One split (its gradient is one stack) rather than three slices
        # (on PyTorch each slice's gradient is a zero-filled qkv-sized
        # tensor; docs/speed.md).
        query, key, value = ops.unstack(qkv, axis=2)
        attended = backend.dot_product_attention(query, key, value)
        attended = ops.reshape(attended, (-1, num_tokens, self.hidden_dim))
        return self.output_projection(attended)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
        }


@keras.saving.register_keras_serializable(package="keras_dsd")
class DSDTransformerBlock(keras.layers.Layer):
    """Pre-norm transformer block with adaLN-Zero conditioning (DiT).

    ```
    shift1, scale1, gate1, shift2, scale2, gate2 = Dense(SiLU(c))
    x = x + gate1 * Attention(norm(x) * (1 + scale1) + shift1)
    x = x + gate2 * MLP(norm(x) * (1 + scale2) + shift2)
    ```
    The modulation Dense is zero-initialised, so a fresh block is the
    identity map.

    Args:
        hidden_dim: int. Token width.
        num_heads: int. Number of attention heads.
        mlp_ratio: float. MLP hidden width as a multiple of `hidden_dim`.
            Defaults to `4.0`.

    Example:
    >>> block = keras_dsd.layers.DSDTransformerBlock(32, num_heads=4)
    >>> block(np.zeros((2, 16, 32)), np.zeros((2, 32))).shape
    (2, 16, 32)
    """

    def __init__(self, hidden_dim, num_heads, mlp_ratio=4.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio

    def build(self, tokens_shape, conditioning_shape=None):
        self.attention_norm = AdaptiveLayerNorm(
            self.hidden_dim,
            num_modulations=3,
            dtype=self.dtype_policy,
            name="attention_norm",
        )
        self.attention_norm.build(tokens_shape)
        self.attention = SelfAttention(
            self.hidden_dim,
            self.num_heads,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.attention.build(tokens_shape)
        self.mlp_norm = AdaptiveLayerNorm(
            self.hidden_dim,
            num_modulations=3,
            dtype=self.dtype_policy,
            name="mlp_norm",
        )
        self.mlp_norm.build(tokens_shape)
        self.mlp_hidden = Dense(
            int(self.hidden_dim * self.mlp_ratio),
            dtype=self.dtype_policy,
            name="mlp_hidden",
        )
        self.mlp_hidden.build(tokens_shape)
        self.mlp_output = Dense(
            self.hidden_dim, dtype=self.dtype_policy, name="mlp_output"
        )
        self.mlp_output.build(
            (None, None, int(self.hidden_dim * self.mlp_ratio))
        )

    def call(self, tokens, conditioning):
        # The barriers change no value; they stop XLA's CPU backend from
        # recomputing every later block's gradient terms in this block.
        tokens = backend.gradient_barrier(tokens)
        normed, gate = self.attention_norm(tokens, conditioning)
        tokens = backend.gradient_barrier(
            tokens + gate * self.attention(normed)
        )
        normed, gate = self.mlp_norm(tokens, conditioning)
        hidden = backend.gelu(self.mlp_hidden(normed))
        return tokens + gate * self.mlp_output(hidden)

    def compute_output_shape(self, tokens_shape, conditioning_shape=None):
        return tokens_shape

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
        }
