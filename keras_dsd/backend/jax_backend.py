import jax
import keras


def compile_inference_function(fn, variables):
    variables = list(variables)

    @jax.jit
    def compiled(values, *args):
        mapping = list(zip(variables, values))
        with keras.StatelessScope(state_mapping=mapping):
            return fn(*args)

    def run(*args):
        outputs = compiled([v.value for v in variables], *args)
        return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)

    return run
