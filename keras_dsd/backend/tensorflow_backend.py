import keras
import tensorflow as tf


def compile_inference_function(fn, variables):
    compiled = tf.function(fn, jit_compile=True, reduce_retracing=True)

    def run(*args):
        args = [tf.convert_to_tensor(a) for a in args]
        outputs = compiled(*args)
        return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)

    return run
