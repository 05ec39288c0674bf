import keras
import numpy as np
from keras import ops


def sincos_position_embedding_2d(grid_size, dim):
    """Fixed 2-D sine-cosine position table of shape `(grid_size**2, dim)`.

    Half of the channels encode the row, half the column, each with the
    1-D transformer encoding of "Attention Is All You Need" (frequencies
    `1 / 10000^(k / (dim / 4))`). Computed in float64 numpy, so it is the
    same on every backend.
    """
    if dim % 4:
        raise ValueError(
            f"sincos_position_embedding_2d: dim={dim} must be divisible by 4."
        )
    freqs = 1.0 / 10000 ** (np.arange(dim // 4, dtype="float64") / (dim / 4))
    rows, cols = np.meshgrid(
        np.arange(grid_size, dtype="float64"),
        np.arange(grid_size, dtype="float64"),
        indexing="ij",
    )

    def encode(positions):
        angles = positions.reshape(-1)[:, None] * freqs[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(rows), encode(cols)], axis=1)


@keras.saving.register_keras_serializable(package="keras_dsd")
class SinCosPositionEmbedding2D(keras.layers.Layer):
    """Adds fixed 2-D sine-cosine positions to a square grid of tokens.

    The table has no weights; it is rebuilt from the config, so it is never
    trained and never saved.

    Args:
        grid_size: int. Number of patches along each side of the image.

    Example:
    >>> layer = keras_dsd.layers.SinCosPositionEmbedding2D(grid_size=4)
    >>> layer(np.zeros((2, 16, 32))).shape
    (2, 16, 32)
    """

    def __init__(self, grid_size, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = grid_size

    def build(self, input_shape):
        num_tokens, dim = input_shape[-2], input_shape[-1]
        if num_tokens is not None and num_tokens != self.grid_size**2:
            raise ValueError(
                f"SinCosPositionEmbedding2D: got {num_tokens} tokens, "
                f"expected grid_size**2={self.grid_size**2}."
            )
        self._table = sincos_position_embedding_2d(self.grid_size, dim)

    def call(self, tokens):
        table = ops.convert_to_tensor(self._table, dtype=tokens.dtype)
        return tokens + table[None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "grid_size": self.grid_size}
