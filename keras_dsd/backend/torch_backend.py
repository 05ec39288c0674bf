import keras
import torch


def compile_inference_function(fn, variables):
    def run(*args):
        with torch.no_grad():
            args = [keras.ops.convert_to_tensor(a) for a in args]
            outputs = fn(*args)
        return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)

    return run
