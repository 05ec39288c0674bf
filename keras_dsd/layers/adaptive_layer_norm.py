import keras
from keras import ops

from keras_dsd.layers.dense import Dense


@keras.saving.register_keras_serializable(package="keras_dsd")
class AdaptiveLayerNorm(keras.layers.Layer):
    """Non-affine LayerNorm whose shift and scale come from a conditioning.

    `y = norm(x) * (1 + scale) + shift` with `(shift, scale)` computed from
    the conditioning vector by `SiLU -> Dense`. The Dense is zero-initialised,
    so at initialisation the layer is a plain LayerNorm. The normalisation
    runs in float32 under mixed precision.

    With `num_modulations > 2` the Dense also produces extra vectors (the
    residual gates of adaLN-Zero), returned after the normalised tokens.

    Args:
        hidden_dim: int. Width of the tokens.
        num_modulations: int. How many `hidden_dim` vectors the conditioning
            produces; the first two are shift and scale. Defaults to `2`.
        epsilon: float. LayerNorm epsilon. Defaults to `1e-6`.
    """

    def __init__(self, hidden_dim, num_modulations=2, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_modulations = num_modulations
        self.epsilon = epsilon

    def build(self, tokens_shape, conditioning_shape=None):
        self.norm = keras.layers.LayerNormalization(
            epsilon=self.epsilon,
            center=False,
            scale=False,
            dtype="float32",
            name="norm",
        )
        self.norm.build(tokens_shape)
        self.modulation = Dense(
            self.num_modulations * self.hidden_dim,
            kernel_initializer="zeros",
            dtype=self.dtype_policy,
            name="modulation",
        )
        self.modulation.build((None, self.hidden_dim))

    def call(self, tokens, conditioning):
        mods = self.modulation(ops.silu(conditioning))
        mods = ops.split(mods, self.num_modulations, axis=-1)
        shift, scale = mods[0], mods[1]
        normed = ops.cast(self.norm(tokens), self.compute_dtype)
        modulated = normed * (1.0 + scale[:, None, :]) + shift[:, None, :]
        if self.num_modulations == 2:
            return modulated
        return (modulated, *[m[:, None, :] for m in mods[2:]])

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_modulations": self.num_modulations,
            "epsilon": self.epsilon,
        }


@keras.saving.register_keras_serializable(package="keras_dsd")
class FinalLayer(keras.layers.Layer):
    """adaLN followed by a Dense projection: a role's output head.

    Args:
        hidden_dim: int. Width of the incoming tokens.
        output_dim: int. Width of each output token.
        zero_init: bool. Zero-initialise the projection, as DiT does for its
            output head, so the head outputs zeros at initialisation.
            Defaults to `True`.
    """

    def __init__(self, hidden_dim, output_dim, zero_init=True, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.output_dim = output_dim
        self.zero_init = zero_init

    def build(self, tokens_shape, conditioning_shape=None):
        self.adaptive_norm = AdaptiveLayerNorm(
            self.hidden_dim, dtype=self.dtype_policy, name="adaptive_norm"
        )
        self.adaptive_norm.build(tokens_shape)
        self.projection = Dense(
            self.output_dim,
            kernel_initializer="zeros" if self.zero_init else "glorot_uniform",
            dtype=self.dtype_policy,
            name="projection",
        )
        self.projection.build((None, None, self.hidden_dim))

    def call(self, tokens, conditioning):
        return self.projection(self.adaptive_norm(tokens, conditioning))

    def compute_output_shape(self, tokens_shape, conditioning_shape=None):
        return (*tokens_shape[:-1], self.output_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "output_dim": self.output_dim,
            "zero_init": self.zero_init,
        }
