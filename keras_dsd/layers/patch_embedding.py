import keras
from keras import ops

from keras_dsd.layers.dense import Dense


def patchify(images, patch_size):
    """Split `(B, H, W, C)` images into `(B, N, p * p * C)` patch tokens.

    Tokens are in row-major order over the `(H / p, W / p)` patch grid.
    """
    _, height, width, channels = images.shape
    rows, cols = height // patch_size, width // patch_size
    x = ops.reshape(images, (-1, rows, patch_size, cols, patch_size, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, rows * cols, patch_size * patch_size * channels))


def unpatchify(tokens, patch_size, image_size, channels=3):
    """Inverse of `patchify`: `(B, N, p * p * C)` tokens to `(B, H, W, C)`."""
    rows = cols = image_size // patch_size
    x = ops.reshape(tokens, (-1, rows, cols, patch_size, patch_size, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, image_size, image_size, channels))


@keras.saving.register_keras_serializable(package="keras_dsd")
class PatchEmbedding(keras.layers.Layer):
    """Cuts images into non-overlapping patches and projects each to a token.

    Equivalent to a convolution with kernel size and stride `patch_size`,
    written as patchify + `Dense` so that the same token order is shared with
    `unpatchify`.

    Args:
        patch_size: int. Side of the square patches. Must divide the image
            height and width.
        hidden_dim: int. Width of the output tokens.

    Example:
    >>> layer = keras_dsd.layers.PatchEmbedding(patch_size=4, hidden_dim=32)
    >>> layer(np.zeros((2, 16, 16, 3))).shape
    (2, 16, 32)
    """

    def __init__(self, patch_size, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim

    def build(self, input_shape):
        _, height, width, channels = input_shape
        for name, size in (("height", height), ("width", width)):
            if size is not None and size % self.patch_size:
                raise ValueError(
                    f"PatchEmbedding: image {name}={size} is not divisible "
                    f"by patch_size={self.patch_size}."
                )
        self.projection = Dense(
            self.hidden_dim, dtype=self.dtype_policy, name="projection"
        )
        self.projection.build(
            (None, None, self.patch_size * self.patch_size * channels)
        )

    def call(self, images):
        return self.projection(patchify(images, self.patch_size))

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        num_patches = (height // self.patch_size) * (width // self.patch_size)
        return (batch, num_patches, self.hidden_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": self.patch_size,
            "hidden_dim": self.hidden_dim,
        }
