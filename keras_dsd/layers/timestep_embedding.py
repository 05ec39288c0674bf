import math

import keras
from keras import ops

from keras_dsd.layers.dense import Dense


def sinusoidal_embedding(timesteps, dim, max_period=10000.0, scale=1000.0):
    """Sinusoidal features of scalar times, shape `(B,)` -> `(B, dim)`.

    Times in `[0, 1]` are multiplied by `scale` first, so that the
    frequencies match DiT's integer-timestep convention.
    """
    half = dim // 2
    freqs = ops.exp(
        -math.log(max_period) * ops.arange(half, dtype="float32") / float(half)
    )
    args = ops.cast(timesteps, "float32")[:, None] * scale * freqs[None, :]
    return ops.concatenate([ops.cos(args), ops.sin(args)], axis=-1)


@keras.saving.register_keras_serializable(package="keras_dsd")
class TimestepEmbedding(keras.layers.Layer):
    """Embeds diffusion times `t` in `[0, 1]` into `hidden_dim` vectors.

    Sinusoidal features followed by a two-layer SiLU MLP, as in DiT. The
    sinusoid is always computed in float32: in bfloat16, `1000 * t` loses
    the resolution that distinguishes neighbouring timesteps.

    Args:
        hidden_dim: int. Output width.
        frequency_dim: int. Number of sinusoidal features. Defaults to `256`.

    Example:
    >>> layer = keras_dsd.layers.TimestepEmbedding(hidden_dim=32)
    >>> layer(np.array([0.0, 0.5, 1.0])).shape
    (3, 32)
    """

    def __init__(self, hidden_dim, frequency_dim=256, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.frequency_dim = frequency_dim

    def build(self, input_shape):
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.dense_1 = Dense(
            self.hidden_dim,
            activation="silu",
            kernel_initializer=init,
            dtype=self.dtype_policy,
            name="dense_1",
        )
        self.dense_1.build((None, self.frequency_dim))
        self.dense_2 = Dense(
            self.hidden_dim,
            kernel_initializer=init,
            dtype=self.dtype_policy,
            name="dense_2",
        )
        self.dense_2.build((None, self.hidden_dim))

    def call(self, timesteps):
        features = sinusoidal_embedding(timesteps, self.frequency_dim)
        return self.dense_2(self.dense_1(features))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.hidden_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "frequency_dim": self.frequency_dim,
        }
