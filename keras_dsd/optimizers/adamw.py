import keras

from keras_dsd import backend


@keras.saving.register_keras_serializable(package="keras_dsd")
class AdamW(backend.adamw_base()):
    """`keras.optimizers.AdamW`, with faster per-variable clipping and
    updates on PyTorch's CPU.

    The same arguments, config, variables and arithmetic as
    `keras.optimizers.AdamW` (a subclass of it), so checkpoints and
    configs move between the two. On PyTorch, Keras clips each gradient
    (`clipnorm`) with about ten eager kernels per variable and updates
    them with ten multi-tensor passes over the weights and moments; here
    the clipping is two multi-tensor kernels and, for float32 variables on
    the CPU, the Adam update is one fused kernel (`torch._fused_adam_`)
    given Keras' epsilon placement. Results agree with Keras' to float32
    round-off. On JAX and TensorFlow it runs Keras' own clipping and
    update, which XLA compiles into the training step.

    `DSDImageGenerator.compile()` and `keras_dsd.recipes` use it by default.

    Example:
    >>> optimizer = keras_dsd.optimizers.AdamW(1e-4, clipnorm=1.0)
    >>> isinstance(optimizer, keras.optimizers.AdamW)
    True
    """

    def _clip_gradients(self, grads):
        if (
            self.clipnorm
            and self.clipnorm > 0
            and all(g is not None for g in grads)
        ):
            clipped = backend.clip_each_by_norm(grads, self.clipnorm)
            if clipped is not None:
                return clipped
        return super()._clip_gradients(grads)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not backend.fused_adam_update(
            self, grads, trainable_variables, learning_rate
        ):
            super()._backend_update_step(
                grads, trainable_variables, learning_rate
            )
