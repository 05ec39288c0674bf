import contextlib
import math
import os

import jax
import jax.numpy as jnp
import keras

from keras_dsd.backend.environment import check_same_count
from keras_dsd.backend.environment import heartbeat_timeout
from keras_dsd.backend.environment import init_timeout
from keras_dsd.backend.environment import int_variable
from keras_dsd.backend.environment import start_up_watchdog


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


def dot_product_attention(query, key, value):
    """Softmax attention on `(B, N, heads, head_dim)` tensors.

    On CPU, the same sums as `jax.nn.dot_product_attention` in an order
    XLA's CPU backend runs faster:

    - The products run heads-first (`(B, heads, N, head_dim)`): batched
      products with the batch dimensions B and heads apart, in the middle
      of the operands, run about 2x slower (DSD-S's shapes, forward and
      backward; docs/speed.md).
    - `1 / sqrt(head_dim)` scales the query, not the `(B, heads, N, N)`
      logits, and the softmax's division comes after the product with
      `value`: `(exp(l - max) @ v) / sum(exp(l - max))`. Scaling and
      dividing the logits made XLA write the constant and the
      denominator to memory broadcast to the logits' full shape, forward
      and backward (one dsd_s-shaped attention call, forward and
      backward: median 82-94 -> 62-66 ms; docs/speed.md).

    Exponentials, sums and the division in float32, as
    `jax.nn.dot_product_attention`'s softmax.
    """
    if jax.default_backend() != "cpu":
        return keras.ops.dot_product_attention(query, key, value)
    query, key, value = (
        jnp.transpose(x, (0, 2, 1, 3)) for x in (query, key, value)
    )
    query = query * jnp.asarray(1.0 / math.sqrt(query.shape[-1]), query.dtype)
    logits = jnp.einsum("bhqd,bhkd->bhqk", query, key).astype("float32")
    # The max only keeps exp() in range; it cancels in the ratio.
    peak = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.exp(logits - peak)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    attended = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(value.dtype), value)
    attended = (attended.astype("float32") / total).astype(value.dtype)
    return jnp.transpose(attended, (0, 2, 1, 3))


def gelu(x):
    """The exact GELU as `x * (1 + erf(x / sqrt 2)) / 2`.

    `jax.nn.gelu(approximate=False)` computes `x * erfc(-x / sqrt 2) / 2`,
    whose two-branch `erfc` (a polynomial each side of 1, an `exp`, a
    division) XLA's CPU backend runs in two elementwise passes over the
    MLP's hidden activations, forward and again in the backward pass
    (8.8 ms per dsd_tiny batch-32 step under `benchmarks/profile_step.py`,
    4.1 ms in this form; docs/speed.md). `erf` is one rational
    polynomial; TensorFlow's GELU uses this form. The two differ
    only where `x < -5`, by less than 1e-6 in absolute value (GELU is
    about 0 there).
    """
    half = jnp.asarray(0.5, x.dtype)
    return (
        half * x * (1 + jax.lax.erf(x * jnp.asarray(math.sqrt(0.5), x.dtype)))
    )


def train_step_with_updates(model, train_step, args, before, after):
    """See `keras_dsd.backend.train_step_with_updates`."""
    state, data = args
    with keras.StatelessScope(state_mapping=_state_mapping(model, state)):
        result = before()
    logs, state = train_step(state, data)
    trainable, non_trainable, optimizer_values, metrics = state
    mapping = _state_mapping(model, state)
    with keras.StatelessScope(state_mapping=mapping) as scope:
        after(result)
    assignable = {id(v) for v in model.non_trainable_variables}
    for variable, value in mapping:
        new = scope.get_current_value(variable)
        if new is not value and id(variable) not in assignable:
            raise ValueError(
                f"train_step_with_updates: `after` may assign only "
                f"non-trainable variables of the model; it assigned "
                f"{variable.path}."
            )
    non_trainable = [
        scope.get_current_value(v) for v in model.non_trainable_variables
    ]
    return logs, (trainable, non_trainable, optimizer_values, metrics)


def _state_mapping(model, state):
    """`(variable, value)` pairs of a JAX training state."""
    trainable, non_trainable, optimizer_values, metrics = state
    return [
        *zip(model.trainable_variables, trainable),
        *zip(model.non_trainable_variables, non_trainable),
        *zip(model.optimizer.variables, optimizer_values),
        *zip(model.metrics_variables, metrics),
    ]


def matmul(x, kernel, bias=None):
    """`x @ kernel (+ bias)`; on the CPU as one 2-D product over all
    leading axes of `x`.

    Differentiating the `(B, N, in) @ (in, out)` product directly, XLA's
    CPU backend first writes each output gradient into a transposed copy
    for the kernel gradient (a contraction over B and N), whose dot then
    packs it the slow way; the 2-D form's kernel gradient reads the output
    gradient as computed. Same arithmetic (the products sum over the same
    axis); a dsd_s batch-4 training step takes about 20 % less time
    (docs/speed.md).
    """
    if jax.default_backend() == "cpu" and len(x.shape) > 2:
        rows = keras.ops.reshape(x, (-1, x.shape[-1]))
        product = keras.ops.reshape(
            keras.ops.matmul(rows, kernel), (*x.shape[:-1], kernel.shape[-1])
        )
    else:
        product = keras.ops.matmul(x, kernel)
    return product if bias is None else keras.ops.add(product, bias)


def gradient_barrier(x):
    """Identity whose gradient XLA computes in full before using it.

    On JAX's CPU only (elsewhere `x` is returned as is). The gradient of a
    residual stream, `x + f(x) + g(x + f(x)) + ...`, is a sum with one term
    per later block. XLA's CPU backend fuses that sum into every consumer
    instead of computing it once (each block's gradient has three: the
    input and weight gradients of the next Dense and the next block), so
    block `i` recomputes the terms of all blocks after it: elementwise work
    quadratic in depth, in fusions of 90+ operands read through transposed
    layouts. `jax.lax.optimization_barrier` would stop this, but XLA's CPU
    pipeline removes it before fusion; a `lax.cond` whose predicate is
    always true (but not provably so to XLA) keeps the gradient one
    buffer. Same values to the bit (NaN and inf included): the cond only
    passes the gradient through. DSD-S training step: about 25 % faster,
    23 % fewer bytes accessed (docs/speed.md).
    """
    if jax.default_backend() != "cpu":
        return x
    return _gradient_barrier(x)


@jax.custom_jvp
def _gradient_barrier(x):
    return x


@_gradient_barrier.defjvp
def _gradient_barrier_jvp(primals, tangents):
    (x,), (tangent,) = primals, tangents
    first = jnp.ravel(x)[0]
    bits = jax.lax.bitcast_convert_type(
        first, jnp.dtype(f"int{8 * first.dtype.itemsize}")
    )
    # Every bit pattern `b` has `b | 1 != 0`, so the first branch always
    # runs; the second only gives XLA a conditional it cannot remove. The
    # tangent's cond transposes to the same cond on the gradient (reverse
    # mode), and forward mode keeps working. The branches are module-level
    # functions: `lax.cond` caches its traced branches by function, and
    # new lambdas at every call retraced them at every eager step.
    tangent = jax.lax.cond((bits | 1) != 0, _identity, jnp.zeros_like, tangent)
    return x, tangent


def _identity(x):
    return x


def replica_id():
    # With `keras.distribution`, one jitted program sees the global batch and
    # the random draws are already distinct across its shards.
    return None


def default_jit_compile():
    return True


def scale_loss_for_replicas(loss):
    return loss


# What `keras.distribution.initialize()` reads.
PROCESS_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


def initialize_processes(multi_host=False):
    """Starts JAX's multi-process runtime when the environment asks for it.

    Asked for by any `KERAS_DISTRIBUTION_*` variable (one process per host,
    `keras.distribution.initialize()` reads them) or by `multi_host=True`
    (a TPU pod, where JAX finds the hosts itself). Before initialising, JAX's
    CPU collectives are set to gloo (`jax_cpu_collectives_implementation`):
    without them a CPU host cannot all-reduce across processes. It only
    concerns the CPU client, so GPU and TPU hosts are unaffected. Returns
    `(num_processes, process_index)`.
    """
    given = {k: os.environ.get(k) for k in PROCESS_VARIABLES}
    if not (multi_host or any(given.values())):
        return jax.process_count(), jax.process_index()
    if jax.distributed.is_initialized():
        return jax.process_count(), jax.process_index()
    if any(given.values()):
        missing = [k for k, v in given.items() if not v]
        if missing:
            raise ValueError(
                f"Multi-process JAX needs all of {', '.join(PROCESS_VARIABLES)}"
                f"; {', '.join(missing)} is not set (got "
                f"{', '.join(f'{k}={v!r}' for k, v in given.items() if v)})."
            )
        count = int_variable("KERAS_DISTRIBUTION_NUM_PROCESSES", 1)
        index = int_variable("KERAS_DISTRIBUTION_PROCESS_ID", 0)
        if index >= count:
            raise ValueError(
                f"KERAS_DISTRIBUTION_PROCESS_ID={index} is out of range for "
                f"KERAS_DISTRIBUTION_NUM_PROCESSES={count}: expected 0 to "
                f"{count - 1}."
            )
        addresses = given["KERAS_DISTRIBUTION_JOB_ADDRESSES"].split(",")
        if len(addresses) > 1 and len(addresses) != count:
            raise ValueError(
                f"KERAS_DISTRIBUTION_JOB_ADDRESSES lists {len(addresses)} "
                f"addresses but KERAS_DISTRIBUTION_NUM_PROCESSES={count}: "
                f"expected one address per process (or the coordinator's "
                f"only)."
            )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _meet(given)
    return jax.process_count(), jax.process_index()


def _meet(given):
    """`jax.distributed.initialize` as `keras.distribution.initialize()`
    calls it, waiting at most `KERAS_DSD_INIT_TIMEOUT` seconds for the
    other processes, then a check through the coordinator's key-value
    store that all read the same `KERAS_DISTRIBUTION_NUM_PROCESSES`."""
    from jax._src import distributed as jax_distributed
    from keras.src.backend.jax import distribution_lib

    seconds = init_timeout()
    if given["KERAS_DISTRIBUTION_JOB_ADDRESSES"]:
        coordinator = given["KERAS_DISTRIBUTION_JOB_ADDRESSES"]
        settings = {
            "coordinator_address": coordinator.split(",")[0],
            "num_processes": int(given["KERAS_DISTRIBUTION_NUM_PROCESSES"]),
            "process_id": int(given["KERAS_DISTRIBUTION_PROCESS_ID"]),
        }
        coordinator = f"KERAS_DISTRIBUTION_JOB_ADDRESSES={coordinator}"
    else:
        # A TPU pod: JAX finds the coordinator and the processes itself.
        settings = {}
        coordinator = "the address JAX detected for this cluster"
    # JAX's own timeout aborts the process from C++ (a fatal log that
    # names no setting): the watchdog ends it first, with the message.
    with start_up_watchdog(seconds, coordinator):
        jax.distributed.initialize(
            **settings,
            initialization_timeout=seconds + 30,
            heartbeat_timeout_seconds=heartbeat_timeout(),
        )
        if settings:
            client = jax_distributed.global_state.client
            count, index = settings["num_processes"], settings["process_id"]
            key = "keras_dsd/num_processes/{}"
            client.key_value_set(key.format(index), str(count))
            peers = range(1, count) if index == 0 else [0]
            others = {
                i: int(
                    client.blocking_key_value_get(
                        key.format(i), (seconds + 30) * 1000
                    )
                )
                for i in peers
            }
    if settings:
        check_same_count(
            "KERAS_DISTRIBUTION_NUM_PROCESSES", count, index, others
        )
    # As `keras.distribution.initialize()`: one random seed for all.
    distribution_lib.initialize_rng()


def setup_data_parallel(devices, tpu, multi_host):
    """`keras.distribution.DataParallel` over `devices` (default: every
    device of every process), after `initialize_processes`. With several
    processes each passes `fit` its own shard of the global batch (no
    auto-sharding), which Keras assembles into the global batch. Returns
    the fields of a `DataParallelContext`."""
    processes, index = initialize_processes(multi_host)
    devices = list(devices or jax.devices())
    platform = devices[0].platform
    if len(devices) > 1:
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(
                devices=devices, auto_shard_dataset=processes == 1
            )
        )
    return {
        "num_replicas": len(devices),
        "num_processes": processes,
        "process_index": index,
        "description": (
            f"{len(devices)} {platform} device(s), "
            f"{processes} process(es), "
            + (
                "keras.distribution.DataParallel"
                if len(devices) > 1
                else "single device"
            )
        ),
    }


@contextlib.contextmanager
def writing_scope():
    """Keras' distribution off while one process writes a file.

    Saving creates throwaway Keras variables (`saving_lib` builds a
    reference optimizer), and under a multi-process distribution creating a
    variable is a collective (`jax.device_put` checks that every process
    passes the same value): run by the writing process alone it would pair
    with another collective of the other processes. Without the
    distribution they are plain local arrays.
    """
    distribution = keras.distribution.distribution()
    if distribution is None or jax.process_count() == 1:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


def process_values(value):
    """`value` (a number) of every process, as a list in process order."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(
        jax.numpy.asarray([value], "float32")
    )
    return [float(v) for v in gathered.reshape(-1)]


def gather_replicas(x):
    # One jitted program already sees the global batch.
    return x


def value_and_grad(fn, variables, tensor):
    """For `keras_dsd.testing.test_utils.value_and_grad`: `fn(tensor)` or
    `fn()` reading `variables`, and its gradients (a list)."""
    if variables is None:
        value, grad = jax.value_and_grad(fn)(tensor)
        return value, [grad]

    def pure(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn()

    value, grads = jax.value_and_grad(pure)([v.value for v in variables])
    return value, list(grads)


def eager_loops():
    """Runs `keras.ops.fori_loop` bodies once per iteration in Python."""
    return jax.disable_jit()
