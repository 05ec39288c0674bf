"""The only backend-specific code of keras_dsd.

- `compile_inference_function(fn, variables)` returns a callable that runs
  `fn(*arrays)` as one compiled program (JAX: `jax.jit` over the variables'
  values; TensorFlow: `tf.function(jit_compile=True)`; PyTorch: eager under
  `torch.no_grad()`, since `torch.compile` costs minutes on small CPUs) and
  returns numpy arrays.
- `dot_product_attention(query, key, value)`: softmax attention on
  `(B, N, heads, head_dim)` tensors. `keras.ops.dot_product_attention`
  (fused kernels: cuDNN on JAX GPUs), except on PyTorch, where it is
  `scaled_dot_product_attention` on heads-first views without Keras'
  copies to contiguous tensors, and on JAX's CPU, where the same sums run
  heads-first, with the scale on the query and the softmax's division
  after the product with `value` (XLA's CPU backend runs `jax.nn`'s order
  slower; `jax_backend`).
- `gelu(x)`: the exact (erf) GELU; on JAX as `x * (1 + erf(x / sqrt 2)) / 2`,
  the form TensorFlow computes, instead of `jax.nn.gelu`'s costlier `erfc`.
- `matmul(x, kernel, bias=None)`: a dense layer's `x @ kernel (+ bias)`;
  on PyTorch's CPU through oneDNN instead of `torch.matmul`, on JAX's CPU
  as one 2-D product over the leading axes (`keras_dsd.layers.Dense`).
- `gradient_barrier(x)`: the identity, whose gradient JAX's CPU backend is
  made to compute once instead of fusing it into every consumer (residual
  streams: `keras_dsd.layers.DSDTransformerBlock`).
- `move_averages(averages, weights, decay)`: the EMA update of one set
  of variables towards another (multi-tensor kernels on PyTorch).
- `adamw_base()`, `clip_each_by_norm(grads, clipnorm)` and
  `fused_adam_update(...)`: the parts of `keras_dsd.optimizers.AdamW`
  (Keras' AdamW; on PyTorch's CPU its clipping and update as multi-tensor
  and fused kernels).
- `replica_id()`: which data-parallel replica runs the current training
  step (`None` where the whole global batch is one program, as with JAX's
  `keras.distribution`), so that replicas draw different diffusion noise.
- `gather_replicas(x)`: the global batch of a per-replica tensor (TF
  `MirroredStrategy` replicas, PyTorch processes), so that logged metrics
  do not depend on the device count.
- `train_step_with_updates(model, train_step, args, before, after)`:
  Keras' training step followed by variable assignments of the model's own
  (`after`, e.g. the EMA updates); JAX's stateless step gets them written
  into the state it returns.
- `prepare_compiled_training(model)`: on PyTorch, before `torch.compile`
  traces a DSD step, raises Dynamo's recompile limit to the model's
  number of layers (Dynamo compiles Keras layers once per instance, and
  past the limit ran most blocks eagerly).
- `setup_data_parallel(...)`: each backend's data-parallel set-up, for
  `keras_dsd.utils.distribution`, after `initialize_processes` of the
  backend's module has joined the processes its launcher describes
  (PyTorch: `torchrun`'s `WORLD_SIZE`/`RANK`/`LOCAL_RANK`; JAX:
  `KERAS_DISTRIBUTION_*` or `multi_host` -> `keras.distribution.initialize()`,
  gloo CPU collectives; TensorFlow: a `TF_CONFIG` worker cluster ->
  `MultiWorkerMirroredStrategy`).
- `process_values(value)`: a number of every process, in process order (a
  host-side all-gather: barriers, agreed stop decisions, resume checks).
- `mean_over_processes(logs)`: logged metrics as global means (PyTorch
  processes each see their own shard).
- `writing_scope()`: what one process runs alone while writing a file
  (multi-process JAX: no collectives inside).
- `distribute_dataset(dataset, num_replicas)`: a process's own data shard
  as `fit`'s input (TensorFlow multi-worker: per-replica batches).
- `value_and_grad(...)` and `eager_loops()`: the backend halves of the
  test helpers in `keras_dsd.testing`.
- `jax_cpu.configure()`: run when `keras_dsd` is imported under JAX
  (before Keras is, if `KERAS_BACKEND=jax`); on JAX's CPU it sets glibc's
  malloc to reuse the temporary buffers XLA frees after every step
  instead of returning them to the system (`KERAS_DSD_KEEP_HOST_MEMORY=0`
  turns it off), and has JAX run computations on the calling thread
  (`JAX_CPU_ENABLE_ASYNC_DISPATCH`, if set, decides instead).
- `keras_dsd.backend.data.first_batch(x, y)`: peeks at the first batch of
  `fit`'s input (numpy, `tf.data`, `PyDataset`, torch `DataLoader`).
- `keras_dsd.backend.torch_backend` also holds the PyTorch multi-process
  helpers (gradient all-reduce, weight broadcast) that `torchrun` training
  needs, since Keras' `fit` has no DistributedDataParallel of its own.
"""

import contextlib
import os

from keras_dsd.backend import jax_cpu

_CONFIGURED_BEFORE_KERAS = os.environ.get("KERAS_BACKEND") == "jax"
if _CONFIGURED_BEFORE_KERAS:
    # Before Keras imports TensorFlow, whose threads would keep malloc
    # arenas of their own (`jax_cpu.keep_freed_host_memory`).
    jax_cpu.configure()

import keras  # noqa: E402


def _module():
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
    return module


if keras.backend.backend() == "jax" and not _CONFIGURED_BEFORE_KERAS:
    # The backend came from keras.json: now, before JAX starts its
    # threads at least.
    jax_cpu.configure()


def compile_inference_function(fn, variables):
    return _module().compile_inference_function(fn, variables)


def dot_product_attention(query, key, value):
    return _module().dot_product_attention(query, key, value)


def gelu(x):
    """The exact GELU, `x * Phi(x)` (see `jax_backend.gelu`)."""
    return _module().gelu(x)


def matmul(x, kernel, bias=None):
    """`x @ kernel (+ bias)` for a `(..., in)` input, an `(in, out)` kernel
    and an optional `(out,)` bias (see `torch_backend.matmul`)."""
    return _module().matmul(x, kernel, bias)


def gradient_barrier(x):
    """Identity with a gradient that XLA's CPU backend computes once
    (see `jax_backend.gradient_barrier`); the plain identity elsewhere."""
    return _module().gradient_barrier(x)


def move_averages(averages, weights, decay):
    """`a <- decay * a + (1 - decay) * w` for each variable `a` of
    `averages` and `w` of `weights` (`decay`: a float32 scalar tensor).

    On PyTorch, with float32 variables, in place in one multi-tensor
    kernel (`torch_backend.move_averages`) instead of several eager
    kernels per variable (docs/speed.md). Elsewhere one `assign` per
    variable (XLA fuses them into the compiled step).
    """
    if keras.backend.backend() == "torch" and all(
        v.dtype == "float32" for v in [*averages, *weights]
    ):
        return _module().move_averages(averages, weights, decay)
    for average, weight in zip(averages, weights):
        old = keras.ops.cast(average.value, "float32")
        new = keras.ops.stop_gradient(keras.ops.cast(weight.value, "float32"))
        average.assign(
            keras.ops.cast(decay * old + (1.0 - decay) * new, average.dtype)
        )


def adamw_base():
    """The class `keras.optimizers.AdamW(...)` builds on this backend (on
    PyTorch, Keras' multi-tensor subclass), for `keras_dsd.optimizers.AdamW`
    to extend."""
    if keras.backend.backend() == "torch":
        return _module().adamw_base()
    return keras.optimizers.AdamW


def clip_each_by_norm(grads, clipnorm):
    """Each gradient scaled to norm at most `clipnorm` (Keras' `clipnorm`),
    on PyTorch as multi-tensor kernels (`torch_backend.clip_each_by_norm`);
    `None` elsewhere, where XLA fuses Keras' own clipping into the step."""
    if keras.backend.backend() == "torch":
        return _module().clip_each_by_norm(grads, clipnorm)
    return None


def fused_adam_update(optimizer, grads, variables, learning_rate):
    """Runs `optimizer`'s Adam update of `variables` as one fused kernel
    where that is exact and faster (PyTorch, float32 CPU tensors:
    `torch_backend.fused_adam_update`) and says whether it did."""
    if keras.backend.backend() == "torch":
        return _module().fused_adam_update(
            optimizer, grads, variables, learning_rate
        )
    return False


def replica_id():
    return _module().replica_id()


def gather_replicas(x):
    return _module().gather_replicas(x)


def default_jit_compile():
    return _module().default_jit_compile()


def prepare_compiled_training(model):
    """Before `model`'s first compiled step: on PyTorch, lets Dynamo
    compile every layer instance (`torch_backend.prepare_compiled_training`);
    nothing elsewhere, where XLA compiles the step as one program."""
    if keras.backend.backend() == "torch":
        _module().prepare_compiled_training(model)


def scale_loss_for_replicas(loss):
    return _module().scale_loss_for_replicas(loss)


def train_step_with_updates(model, train_step, args, before, after):
    """Runs Keras' `train_step(*args)` with work of the model around it.

    `before()` runs on the variables before the step and `after(result)`
    on those after it, with `result = before()`; `after` assigns
    non-trainable variables of `model` (`variable.assign`). On TensorFlow
    and PyTorch that is all. JAX's step is a pure function of the state it
    is given: both run in a `keras.StatelessScope` over that state, and the
    assignments of `after` go into the returned state.

    Returns what `train_step` returns.
    """
    if keras.backend.backend() == "jax":
        return _module().train_step_with_updates(
            model, train_step, args, before, after
        )
    result = before()
    logs = train_step(*args)
    after(result)
    if keras.backend.backend() == "tensorflow":
        return _module().logs_for_multi_worker(logs)
    return logs


def setup_data_parallel(devices, tpu, multi_host):
    """The fields of a `keras_dsd.utils.distribution.DataParallelContext`
    for this backend (see `setup_data_parallel` there)."""
    return _module().setup_data_parallel(devices, tpu, multi_host)


def process_values(value):
    """`value` (a number) of every process of a multi-process run, as a
    list of floats in process order (`[value]` with one process). Every
    process must call it at the same point: it is a collective."""
    return _module().process_values(value)


def mean_over_processes(logs):
    """The mean over processes of each value of a dict of logged means: on
    multi-process PyTorch, where each process's metrics see its own shard,
    an all-reduce; elsewhere `logs` (the metrics already see the global
    batch). A collective: every process calls it at the same point."""
    if keras.backend.backend() == "torch":
        return _module().mean_over_processes(logs)
    return logs


def writing_scope():
    """A context for what one process alone runs while writing files (a
    checkpoint, a preset): on multi-process JAX, Keras' distribution is off
    inside it, so that the variables Keras' saving creates are not
    collectives (`jax_backend.writing_scope`); a no-op elsewhere."""
    if keras.backend.backend() == "jax":
        return _module().writing_scope()
    return contextlib.nullcontext()


def distribute_dataset(dataset, num_replicas):
    """This process's data shard as `fit`'s input: on TensorFlow with
    several workers, a `tf.distribute` dataset of per-replica batches;
    elsewhere `dataset` itself."""
    if keras.backend.backend() == "tensorflow":
        return _module().distribute_dataset(dataset, num_replicas)
    return dataset


def value_and_grad(fn, variables, tensor):
    """The backend half of `keras_dsd.testing.test_utils.value_and_grad`."""
    return _module().value_and_grad(fn, variables, tensor)


def eager_loops():
    """A context that runs `keras.ops.fori_loop` bodies in Python, once
    per iteration (for tests that count calls)."""
    return _module().eager_loops()
