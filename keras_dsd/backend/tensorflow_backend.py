import contextlib
import json
import os

import keras
import tensorflow as tf

from keras_dsd.backend.environment import check_same_count
from keras_dsd.backend.environment import init_timeout
from keras_dsd.backend.environment import start_up_watchdog


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


# The `MultiWorkerMirroredStrategy` of a `TF_CONFIG` run, once created.
_MULTI_WORKER = {}


def initialize_processes(multi_host=False):
    """`MultiWorkerMirroredStrategy` when `TF_CONFIG` describes a cluster
    of several workers (one process per host, each given its
    `{"task": {"type": "worker", "index": i}}`), else `None`.

    Must run before any other TensorFlow op of the process (TensorFlow
    starts the collective runtime with the strategy). `multi_host` is for
    JAX and ignored. Returns `(strategy or None, num_workers,
    worker_index)`.
    """
    if "strategy" in _MULTI_WORKER:
        strategy = _MULTI_WORKER["strategy"]
        return strategy, _MULTI_WORKER["workers"], _MULTI_WORKER["index"]
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None, 1, 0
    try:
        config = json.loads(text)
        workers = list(config["cluster"].get("worker", []))
        task = config.get("task", {})
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(
            f"TF_CONFIG={text!r} is not a JSON object with a "
            f'"cluster": {{"worker": [...]}} and a "task": {{"type": '
            f'"worker", "index": i}}.'
        ) from None
    others = sorted(set(config["cluster"]) - {"worker"})
    if others:
        raise ValueError(
            f"TF_CONFIG's cluster has {others}: only a cluster of "
            f'"worker" tasks (MultiWorkerMirroredStrategy) is supported.'
        )
    if len(workers) < 2:
        return None, 1, 0
    index = task.get("index")
    if task.get("type") != "worker" or not (
        isinstance(index, int) and 0 <= index < len(workers)
    ):
        raise ValueError(
            f"TF_CONFIG's task {task!r} is not one of the cluster's "
            f'{len(workers)} workers: expected {{"type": "worker", '
            f'"index": i}} with 0 <= i < {len(workers)}.'
        )
    # MultiWorkerMirroredStrategy waits for every worker without a
    # timeout: the watchdog bounds its start and its first collective,
    # which gathers the worker count each process read.
    with start_up_watchdog(init_timeout(), f"TF_CONFIG={text}"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _MULTI_WORKER.update(
            strategy=strategy, workers=len(workers), index=index
        )
        try:
            counts = process_values(len(workers))
        except tf.errors.OpError as error:
            # TensorFlow's collectives refuse a group whose workers
            # disagree on its size (several cluster sizes).
            if "that group has size" not in str(error):
                raise
            raise ValueError(
                f"The processes were started with different TF_CONFIG "
                f"clusters: this process (worker {index}) lists "
                f"{len(workers)} workers but another lists a different "
                f"number. Start every process with the same cluster."
            ) from None
    check_same_count(
        "TF_CONFIG workers",
        len(workers),
        index,
        {i: int(count) for i, count in enumerate(counts)},
    )
    return strategy, len(workers), index


def setup_data_parallel(devices, tpu, multi_host):
    """`TPUStrategy` when a TPU is named (or `TPU_NAME` is set);
    `MultiWorkerMirroredStrategy` when `TF_CONFIG` names several workers
    (`initialize_processes`); else `MirroredStrategy` over `devices`
    (default: every GPU) when there are several. Returns the fields of a
    `DataParallelContext`."""
    tpu = tpu or os.environ.get("TPU_NAME")
    workers, index = 1, 0
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
        kind = "TPUStrategy"
    else:
        strategy, workers, index = initialize_processes(multi_host)
        kind = "MultiWorkerMirroredStrategy"
    if strategy is None:
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
        "num_processes": workers,
        "process_index": index,
        "strategy": strategy,
        "description": (
            f"{replicas} replica(s), {workers} process(es), tf.distribute "
            f"{kind}"
        ),
    }


def distribute_dataset(dataset, num_replicas):
    """A multi-worker run's input: each worker's `dataset` (its own shard,
    `global / workers` images per batch) split into per-replica batches of
    `global / num_replicas` for its local replicas, through
    `distribute_datasets_from_function` (no auto-sharding: the shard was
    read before decoding). Else `dataset` as it is (Keras splits the
    global batch across a single process's replicas)."""
    strategy = _MULTI_WORKER.get("strategy")
    if strategy is None:
        return dataset
    workers = _MULTI_WORKER["workers"]
    local_replicas = num_replicas // workers
    if local_replicas > 1:
        batch = dataset.element_spec[0].shape[0]
        dataset = dataset.rebatch(batch // local_replicas)
    distributed = strategy.distribute_datasets_from_function(
        lambda context: dataset
    )
    # For `build_from_spec`: Keras' build peeks at a distributed batch.
    _MULTI_WORKER["element_spec"] = dataset.element_spec
    return distributed


def prepare_multi_worker_model(model):
    """Works around two places where Keras' TensorFlow `fit` fails under
    `MultiWorkerMirroredStrategy`:

    - it builds the model from a first distributed batch reduced across
      replicas, which this strategy cannot do for a nest of tensors ("Attempt
      to convert a value (PerReplica...)"): `model` is built from the shapes
      of the workers' batches instead;
    - it averages the logged values with `strategy.reduce("MEAN", v,
      axis=0)`, which fails on scalars ("Invalid reduction dimension 0"):
      each replica logs its values as `(1,)` tensors instead
      (`logs_for_multi_worker`), whose mean along axis 0 is the replicas'
      mean (a scalar).
    """
    if "strategy" not in _MULTI_WORKER:
        return
    spec = _MULTI_WORKER.get("element_spec")
    if spec is None:
        return
    trainer = type(model)._maybe_symbolic_build

    def symbolic_build(iterator=None, data_batch=None):
        return trainer(model, data_batch=spec)

    model._maybe_symbolic_build = symbolic_build


def logs_for_multi_worker(logs):
    """A replica's logged values as `(1,)` tensors inside a multi-worker
    step (see `prepare_multi_worker_model`); else `logs`."""
    if "strategy" not in _MULTI_WORKER:
        return logs
    return {k: tf.reshape(tf.cast(v, "float32"), [1]) for k, v in logs.items()}


def process_values(value):
    """`value` (a number) of every worker, as a list in worker order."""
    strategy = _MULTI_WORKER.get("strategy")
    if strategy is None:
        return [value]
    if "gather" not in _MULTI_WORKER:

        @tf.function
        def gather(number):
            def replica_fn(x):
                context = tf.distribute.get_replica_context()
                return context.all_gather(tf.reshape(x, [1]), axis=0)

            return strategy.run(replica_fn, args=(number,))

        _MULTI_WORKER["gather"] = gather
    result = _MULTI_WORKER["gather"](tf.constant(float(value), tf.float64))
    gathered = strategy.experimental_local_results(result)[0].numpy()
    # One value per replica; the workers hold equally many, in order.
    step = len(gathered) // _MULTI_WORKER["workers"]
    return [float(v) for v in gathered[::step]]


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
