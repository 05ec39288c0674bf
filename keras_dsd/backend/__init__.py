"""The only backend-specific code of keras_dsd: compiling inference programs.

`compile_inference_function(fn, variables)` returns a callable that runs
`fn(*arrays)` as one compiled program (JAX: `jax.jit` over the variables'
values; TensorFlow: `tf.function(jit_compile=True)`; PyTorch: eager under
`torch.no_grad()`, since `torch.compile` costs minutes on small CPUs) and
returns numpy arrays.
"""

import keras


def compile_inference_function(fn, variables):
    backend = keras.backend.backend()
    if backend == "jax":
        from keras_dsd.backend import jax_backend as module
    elif backend == "tensorflow":
        from keras_dsd.backend import tensorflow_backend as module
    elif backend == "torch":
        from keras_dsd.backend import torch_backend as module
    else:
        raise ValueError(
            f"keras_dsd supports the jax, tensorflow and torch backends; "
            f"KERAS_BACKEND={backend!r}."
        )
    return module.compile_inference_function(fn, variables)
