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


def replica_id():
    # With `keras.distribution`, one jitted program sees the global batch and
    # the random draws are already distinct across its shards.
    return None


def default_jit_compile():
    return True


def scale_loss_for_replicas(loss):
    return loss


def gather_replicas(x):
    # One jitted program already sees the global batch.
    return x
