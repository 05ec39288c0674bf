import keras

from keras_dsd import backend


@keras.saving.register_keras_serializable(package="keras_dsd")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` whose product goes through
    `keras_dsd.backend.matmul`.

    The same weights, names, arguments and quantization/LoRA behaviour as
    `keras.layers.Dense` (a quantized layer runs Keras' own quantized
    call); only how the float product runs differs, and only on CPUs:
    on PyTorch through oneDNN at about 1.8 times the speed of
    `torch.matmul` (`keras_dsd.backend.torch_backend.matmul`), on JAX as
    one 2-D product whose kernel gradient XLA computes without a
    transposed copy (`keras_dsd.backend.jax_backend.matmul`). Every dense
    projection of the DSD network is one of these.

    Example:
    >>> layer = keras_dsd.layers.Dense(8)
    >>> layer(np.ones((2, 5, 4))).shape
    (2, 5, 8)
    """

    def quantize(self, mode=None, type_check=True, config=None):
        # `keras.layers.Dense.quantize` refuses subclasses, whose `call` it
        # cannot vouch for; this one's quantized call is Keras' own.
        super().quantize(mode, type_check=False, config=config)

    def call(self, inputs, training=None):
        outputs = backend.matmul(inputs, self.kernel, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs
