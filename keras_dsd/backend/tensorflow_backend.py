import contextlib
import os

import keras
import tensorflow as tf


def compile_inference_function(fn, variables):
    compiled = tf.function(fn, jit_compile=True, reduce_retracing=True)

    def run(*args):
        args = [tf.convert_to_tensor(a) for a in args]
        outputs = compiled(*args)
        return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)

    return run


def dot_product_attention(query, key, value):
    return keras.ops.dot_product_attention(query, key, value)


def gelu(x):
    return keras.ops.gelu(x, approximate=False)


def matmul(x, kernel, bias=None):
    product = keras.ops.matmul(x, kernel)
    return product if bias is None else keras.ops.add(product, bias)


def gradient_barrier(x):
    # Only XLA's CPU backend needs one (see jax_backend.gradient_barrier).
    return x


def replica_id():
    """The replica id inside `strategy.run` with several replicas, else
    `None`."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context.replica_id_in_sync_group


def default_jit_compile():
    """XLA, except for a multi-replica strategy over CPU devices, where XLA
    reads a variable across devices and fails (TF's known XLA issue)."""
    if not tf.distribute.has_strategy():
        return True
    strategy = tf.distribute.get_strategy()
    devices = getattr(strategy.extended, "worker_devices", ())
    on_cpu = any("CPU" in device.upper() for device in devices)
    return not (strategy.num_replicas_in_sync > 1 and on_cpu)


def scale_loss_for_replicas(loss):
    """Divides a replica's loss by the replica count: `MirroredStrategy`
    and `TPUStrategy` sum the replicas' gradients (Keras' built-in losses
    do the same)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


def setup_data_parallel(devices, tpu, multi_host):
    """`TPUStrategy` when a TPU is named (or `TPU_NAME` is set), else
    `MirroredStrategy` over `devices` (default: every GPU) when there are
    several. Returns the fields of a `DataParallelContext`."""
    tpu = tpu or os.environ.get("TPU_NAME")
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
        kind = "TPUStrategy"
    else:
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = list(devices or gpus)
        if len(devices) > 1:
            strategy = tf.distribute.MirroredStrategy(devices)
            kind = "MirroredStrategy"
        else:
            strategy = tf.distribute.get_strategy()
            kind = "default strategy"
    replicas = strategy.num_replicas_in_sync
    return {
        "num_replicas": replicas,
        "strategy": strategy,
        "description": f"{replicas} replica(s), tf.distribute {kind}",
    }


def gather_replicas(x):
    """`x` of every replica, concatenated along axis 0, inside a
    multi-replica `strategy.run`; else `x`."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x
    gathered = context.all_gather(x, axis=0)
    # `all_gather` loses the static shape of the other axes.
    return tf.reshape(gathered, [-1, *x.shape[1:]])


def value_and_grad(fn, variables, tensor):
    """For `keras_dsd.testing.test_utils.value_and_grad`: `fn(tensor)` or
    `fn()` reading `variables`, and its gradients (a list)."""
    with tf.GradientTape() as tape:
        if variables is None:
            tape.watch(tensor)
            value = fn(tensor)
        else:
            value = fn()
    sources = [tensor] if variables is None else [v.value for v in variables]
    return value, list(tape.gradient(value, sources))


def eager_loops():
    """Eager `tf.while_loop` already runs its body once per iteration."""
    return contextlib.nullcontext()
