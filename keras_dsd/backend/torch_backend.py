import atexit
import contextlib
import math
import os
import time

import keras
import torch

from keras_dsd.backend.environment import check_same_count
from keras_dsd.backend.environment import init_timeout
from keras_dsd.backend.environment import int_variable
from keras_dsd.backend.environment import start_up_timeout


def compile_inference_function(fn, variables):
    def run(*args):
        with torch.no_grad():
            args = [keras.ops.convert_to_tensor(a) for a in args]
            outputs = fn(*args)
        return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)

    return run


def _process_group():
    """`(rank, world_size)` of an initialised process group, else `None`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.get_rank(), dist.get_world_size()


def dot_product_attention(query, key, value):
    """`keras.ops.dot_product_attention` without its copies: PyTorch's
    `scaled_dot_product_attention` on heads-first views of the
    `(B, N, heads, head_dim)` tensors. Keras copies query, key and value
    to contiguous tensors first wherever its flash-attention check fails,
    which on the CPU is always; PyTorch's fused kernels take the strided
    views as they are (on a GPU PyTorch picks the kernel:
    `benchmarks/attention_kernel.py` shows which one runs)."""
    query, key, value = (
        keras.ops.convert_to_tensor(x).transpose(1, 2)
        for x in (query, key, value)
    )
    attended = torch.nn.functional.scaled_dot_product_attention(
        query, key, value
    )
    return attended.transpose(1, 2)


def _onednn_linear():
    """`torch.ops.mkldnn._linear_pointwise` where this torch has it, else
    `None`. It computes `x @ w.T` through oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


class _OneDNNMatmul(torch.autograd.Function):
    """`x @ kernel (+ bias)` for 2D float32 CPU tensors, forward and
    backward through oneDNN's linear kernel (the bias added inside it)."""

    @staticmethod
    def forward(ctx, x, kernel, bias):
        ctx.save_for_backward(x, kernel)
        ctx.has_bias = bias is not None
        return _LINEAR(x, kernel.t(), bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        x, kernel = ctx.saved_tensors
        grad_x = grad_kernel = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _LINEAR(grad, kernel, None, "none", [], "")
        if ctx.needs_input_grad[1]:
            # oneDNN's first operand must be row-major: a transposed one is
            # copied inside the call, a strided walk over the whole tensor
            # that the CPU's TLB makes slow (19 ms for the (1024, 2048)
            # input of a dsd_s MLP output layer). So the smaller of x and
            # grad is the transposed first operand: x.T @ grad, or
            # (grad.T @ x).T.
            if x.shape[1] > grad.shape[1]:
                grad_kernel = _LINEAR(grad.t(), x.t(), None, "none", [], "")
                grad_kernel = grad_kernel.t().contiguous()
            else:
                grad_kernel = _LINEAR(x.t(), grad.t(), None, "none", [], "")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_kernel, grad_bias


_LINEAR = _onednn_linear()


def matmul(x, kernel, bias=None):
    """`x @ kernel (+ bias)` for a `(..., in)` input, an `(in, out)`
    kernel and an optional `(out,)` bias.

    On the CPU in float32, through oneDNN (forward, with the bias added
    inside the kernel, and all gradients) instead of `torch.matmul`: the
    MKL build in PyTorch's CPU wheels runs AVX2 kernels on AMD processors,
    at less than half the oneDNN rate on the same cores (docs/speed.md).
    Its rows agree to the bit whatever their number on some processors,
    not on all (on a Zen 2, 1 or 2 rows differ in the last bits, as
    MKL's do), so tests compare within float32 rounding. Elsewhere (CUDA,
    half precision, `torch.compile` tracing) it is `keras.ops.matmul` and
    `keras.ops.add`, as in `keras.layers.Dense`.
    """
    x = keras.ops.convert_to_tensor(x)
    kernel = keras.ops.convert_to_tensor(kernel)
    if bias is not None:
        bias = keras.ops.convert_to_tensor(bias)
    if (
        _LINEAR is None
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or kernel.dtype != torch.float32
        or kernel.dim() != 2
        or x.numel() == 0  # oneDNN has no empty product
        or (bias is not None and bias.dtype != torch.float32)
        or torch.compiler.is_compiling()
    ):
        product = keras.ops.matmul(x, kernel)
        return product if bias is None else keras.ops.add(product, bias)
    flat = x.reshape(-1, x.shape[-1])
    product = _OneDNNMatmul.apply(flat, kernel, bias)
    return product.reshape(*x.shape[:-1], kernel.shape[-1])


def move_averages(averages, weights, decay):
    """`a <- decay * a + (1 - decay) * w` for lists of float32 variables,
    in place, as one multi-tensor kernel (`torch._foreach_lerp_`); `decay`
    is a scalar tensor, read on its device (no host sync)."""
    with torch.no_grad():
        targets = [a.value for a in averages]
        sources = [w.value.detach() for w in weights]
        decay = keras.ops.convert_to_tensor(decay, "float32")
        torch._foreach_lerp_(targets, sources, [1 - decay] * len(targets))


def clip_each_by_norm(grads, clipnorm):
    """`g * clipnorm / max(norm(g), clipnorm)` for each gradient `g` (the
    `clipnorm` of Keras' optimizers), as two multi-tensor kernels and two
    small ones on the norms, instead of about ten eager kernels per
    gradient. New tensors: `grads` are left as they are."""
    with torch.no_grad():
        norms = torch.stack(torch._foreach_norm(grads))
        # `clamp` keeps a NaN norm NaN, as Keras' `maximum` does.
        scales = clipnorm / torch.clamp(norms, min=clipnorm)
        return list(torch._foreach_mul(grads, list(scales.unbind())))


def adamw_base():
    """The class `keras.optimizers.AdamW(...)` builds on PyTorch: Keras'
    AdamW with its update as multi-tensor (`torch._foreach_*`) kernels."""
    from keras.src.backend.torch.optimizers import torch_adamw

    return torch_adamw.AdamW


def _contiguous_cpu_float32(tensors):
    return all(
        t.device.type == "cpu"
        and t.dtype == torch.float32
        and t.layout == torch.strided
        and t.is_contiguous()
        for t in tensors
    )


def fused_adam_update(optimizer, grads, variables, learning_rate):
    """Keras' Adam update of `variables` (after Keras' own clipping and
    weight decay) as one fused kernel, `torch._fused_adam_`: one pass over
    each variable, its gradient and its two moments, instead of Keras'
    ten multi-tensor passes. Only for contiguous float32 CPU tensors
    (gradients are made contiguous) without `amsgrad`, outside
    `torch.compile`; returns False (and does nothing) otherwise.

    The arithmetic is Keras': `m <- b1 m + (1 - b1) g`,
    `v <- b2 v + (1 - b2) g^2`, `w <- w - lr sqrt(1 - b2^t) / (1 - b1^t)
    m / (sqrt(v) + eps)` with `t` the update's number. PyTorch's kernel
    adds its epsilon after dividing `sqrt(v)` by `sqrt(1 - b2^t)`, so it
    is given `eps / sqrt(1 - b2^t)`, which needs `t` on the host: free on
    the CPU, a synchronisation on an accelerator (where Keras' update
    runs instead).
    """
    if optimizer.amsgrad or torch.compiler.is_compiling():
        return False
    index = optimizer._get_variable_index
    params = [v.value for v in variables]
    momentums = [optimizer._momentums[index(v)].value for v in variables]
    velocities = [optimizer._velocities[index(v)].value for v in variables]
    # The CPU kernel walks each tensor's memory in order: a transposed
    # gradient (a view) would meet the wrong moments.
    grads = [g.contiguous() for g in grads]
    tensors = [*params, *grads, *momentums, *velocities]
    if not _contiguous_cpu_float32(tensors):
        return False
    step = int(keras.ops.convert_to_tensor(optimizer.iterations)) + 1
    beta_2 = float(optimizer.beta_2)
    with torch.no_grad():
        torch._fused_adam_(
            params,
            grads,
            momentums,
            velocities,
            [],
            [torch.tensor(float(step))] * len(params),
            lr=float(keras.ops.convert_to_tensor(learning_rate)),
            beta1=float(optimizer.beta_1),
            beta2=beta_2,
            weight_decay=0.0,  # Keras' `_apply_weight_decay` has run
            eps=float(optimizer.epsilon) / math.sqrt(1.0 - beta_2**step),
            amsgrad=False,
            maximize=False,
        )
    return True


def gelu(x):
    return keras.ops.gelu(x, approximate=False)


def gradient_barrier(x):
    # Only XLA's CPU backend needs one (see jax_backend.gradient_barrier).
    return x


def replica_id():
    group = _process_group()
    if group is None or group[1] == 1:
        return None
    return group[0]


def broadcast_variables(variables, source=0):
    """Copies the variables' values from process `source` to all others."""
    import torch.distributed as dist

    with torch.no_grad():
        for variable in variables:
            dist.broadcast(variable.value.data, src=source)


def average_gradients_across_processes(
    variables, bucket_cap_mb=25.0, optimizer=None
):
    """Makes `backward()` leave the process-average gradient in each
    variable, as DistributedDataParallel does, so that Keras' own
    `train_step` and optimizer apply the same update on every process.

    With `optimizer` (a Keras optimizer with `gradient_accumulation_steps`)
    the micro-batches that only accumulate communicate nothing, as under
    DistributedDataParallel's `no_sync()`: each process accumulates its own
    gradients, and the micro-batch that updates the weights all-reduces
    `accumulated + gradient` and leaves `mean - accumulated` in each
    gradient, so that the optimizer's `(gradient + accumulated) / steps`
    is the average over processes and micro-batches. One all-reduce per
    update instead of one per micro-batch.

    Gradients are grouped in buckets of about `bucket_cap_mb` MiB, in the
    reverse of the variables' order (about the order backward produces
    them). A bucket's all-reduce starts, without blocking, as soon as its
    last gradient is accumulated, so communication overlaps the rest of the
    backward pass; the end of `backward()` waits for the buckets and writes
    the averages back. Buckets start in a fixed order on every process, so
    the collectives match. Returns a `GradientBuckets` (`.remove()` undoes
    it).
    """
    return GradientBuckets(variables, bucket_cap_mb, optimizer)


class GradientBuckets:
    """Bucketed, overlapped gradient all-reduce (see
    `average_gradients_across_processes`).

    `seconds_waiting` accumulates the time the end of `backward()` spent
    waiting for all-reduces still in flight: the communication the backward
    pass did not hide; `all_reduces` counts the buckets all-reduced.
    """

    def __init__(self, variables, bucket_cap_mb=25.0, optimizer=None):
        import torch.distributed as dist

        if not bucket_cap_mb > 0:
            raise ValueError(
                f"bucket_cap_mb must be > 0 MiB, got {bucket_cap_mb!r}."
            )
        self.world_size = dist.get_world_size()
        variables = list(variables)
        parameters = [v.value for v in variables]
        # No-sync micro-batches need the optimizer's accumulators, which a
        # loss-scaling wrapper holds unscaled (then: sync every batch).
        steps = getattr(optimizer, "gradient_accumulation_steps", None)
        if steps and not hasattr(optimizer, "inner_optimizer"):
            self.optimizer = optimizer
            self.variable_of = {id(v.value): v for v in variables}
        else:
            self.optimizer = None
        self.all_reduces = 0
        self.buckets = []
        current, size = [], 0
        for parameter in reversed(parameters):
            current.append(parameter)
            size += parameter.numel() * parameter.element_size()
            if size >= bucket_cap_mb * 2**20:
                self.buckets.append(current)
                current, size = [], 0
        if current:
            self.buckets.append(current)
        self.bucket_of = {
            id(p): i for i, bucket in enumerate(self.buckets) for p in bucket
        }
        self.seconds_waiting = 0.0
        self._reset()
        self.handles = [
            p.register_post_accumulate_grad_hook(self._on_gradient)
            for p in parameters
        ]

    def _reset(self):
        self.ready = [0] * len(self.buckets)
        self.next_bucket = 0
        self.in_flight = []
        self.callback_queued = False
        self.sync = True

    def _is_update_step(self):
        """Whether the optimizer applies its update after this backward
        pass (every micro-batch without gradient accumulation); the same
        answer on every process, which all count the same micro-batches."""
        optimizer = self.optimizer
        if optimizer is None:
            return True
        steps = optimizer.gradient_accumulation_steps
        done = int(keras.ops.convert_to_numpy(optimizer._iterations))
        return (done + 1) % steps == 0

    def _accumulated(self, parameter):
        if self.optimizer is None or not self.optimizer.built:
            return None
        variable = self.variable_of[id(parameter)]
        index = self.optimizer._get_variable_index(variable)
        return self.optimizer._accumulated_gradients[index].value

    def _on_gradient(self, parameter):
        if not self.callback_queued:
            torch.autograd.Variable._execution_engine.queue_callback(
                self._finish
            )
            self.callback_queued = True
            self.sync = self._is_update_step()
        if not self.sync:
            return  # no_sync: this micro-batch only accumulates
        self.ready[self.bucket_of[id(parameter)]] += 1
        # Start buckets strictly in order, so every process issues the
        # same sequence of collectives.
        while self.next_bucket < len(self.buckets) and self.ready[
            self.next_bucket
        ] == len(self.buckets[self.next_bucket]):
            self._start(self.next_bucket)
            self.next_bucket += 1

    def _start(self, index):
        import torch.distributed as dist

        bucket = self.buckets[index]
        for parameter in bucket:
            if parameter.grad is None:  # unused in this step
                parameter.grad = torch.zeros_like(parameter)
        pieces = []
        with torch.no_grad():
            for parameter in bucket:
                piece = parameter.grad.reshape(-1)
                accumulated = self._accumulated(parameter)
                if accumulated is not None:
                    piece = piece + accumulated.reshape(-1)
                pieces.append(piece)
        flat = torch.cat(pieces)
        work = dist.all_reduce(flat, async_op=True)
        self.all_reduces += 1
        self.in_flight.append((bucket, flat, work))

    def _finish(self):
        if not self.sync:
            self._reset()
            return
        # Buckets with an unused parameter never filled: start them now.
        while self.next_bucket < len(self.buckets):
            self._start(self.next_bucket)
            self.next_bucket += 1
        start = time.perf_counter()
        with torch.no_grad():
            for bucket, flat, work in self.in_flight:
                work.wait()  # gloo has no AVG: sum, then divide
                flat.div_(self.world_size)
                offset = 0
                for parameter in bucket:
                    count = parameter.numel()
                    mean = flat[offset : offset + count].view_as(parameter)
                    accumulated = self._accumulated(parameter)
                    if accumulated is not None:
                        # The optimizer adds its own accumulator back.
                        mean = mean - accumulated
                    parameter.grad.copy_(mean)
                    offset += count
        self.seconds_waiting += time.perf_counter() - start
        self._reset()

    def remove(self):
        for handle in self.handles:
            handle.remove()
        self.handles = []


def default_jit_compile():
    # `torch.compile` costs minutes before the first step on small CPUs.
    return False


def prepare_compiled_training(model):
    """Lets `torch.compile` compile every layer of `model` (`compile(...,
    jit_compile=True)`).

    Dynamo compiles a Keras layer's frames once per layer instance (its
    guards check each instance's name scope) and per gradient mode, and
    after `torch._dynamo.config.recompile_limit` versions of a frame (8
    by default) runs that frame eagerly from then on: in a DSD step, whose
    network and teacher copies hold 8 block instances in dsd_tiny and 28
    in dsd_b, the blocks past the limit ran uncompiled (docs/speed.md).
    The limit, a process-wide setting, is raised to the number of layers
    in `model`, never lowered.
    """
    import torch._dynamo

    config = torch._dynamo.config
    layers = len(list(model._flatten_layers()))
    config.recompile_limit = max(config.recompile_limit, layers)
    config.accumulated_recompile_limit = max(
        config.accumulated_recompile_limit, layers
    )


def scale_loss_for_replicas(loss):
    return loss


# What `torchrun` sets for each process.
PROCESS_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def initialize_processes(multi_host=False):
    """Joins the process group that `torchrun` describes, if any.

    `WORLD_SIZE`, `RANK` and `LOCAL_RANK` (set by `torchrun`, on one node or
    several) select it; `MASTER_ADDR`/`MASTER_PORT` say where to meet.
    NCCL on CUDA (each process on GPU `LOCAL_RANK`), else gloo.
    `multi_host` is for JAX and ignored. Returns `(num_processes,
    process_index)`.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    given = {k: os.environ.get(k) for k in PROCESS_VARIABLES}
    world_size = int_variable("WORLD_SIZE", 1) if given["WORLD_SIZE"] else 1
    if world_size == 1:
        return 1, 0
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(
                f"WORLD_SIZE={world_size} but {name} is not set: launch the "
                f"processes with `torchrun`, which sets RANK, LOCAL_RANK, "
                f"MASTER_ADDR and MASTER_PORT."
            )
    rank = int_variable("RANK", 0)
    if rank >= world_size:
        raise ValueError(
            f"RANK={rank} is out of range for WORLD_SIZE={world_size}: "
            f"expected 0 to {world_size - 1}."
        )
    store = _meet(rank, world_size)
    if torch.cuda.is_available():
        torch.cuda.set_device(int_variable("LOCAL_RANK", 0))
        dist.init_process_group(
            "nccl", store=store, rank=rank, world_size=world_size
        )
    else:
        dist.init_process_group(
            "gloo", store=store, rank=rank, world_size=world_size
        )
    # Leave the group before the interpreter shuts down: a group still
    # alive then is torn down with its threads running, which aborted a
    # finished process now and then ("terminate called without an active
    # exception", SIGABRT).
    atexit.register(_leave_process_group)
    return dist.get_world_size(), dist.get_rank()


def _meet(rank, world_size):
    """The store of the process group, once every process has joined it
    (within `KERAS_DSD_INIT_TIMEOUT` seconds) with the same `WORLD_SIZE`.

    Each process writes its `WORLD_SIZE` to the rendezvous store (the
    `MASTER_ADDR:MASTER_PORT` one `init_process_group` would make, or
    `torchrun`'s); process 0 compares the others' values with its own,
    the others compare theirs with process 0's.
    """
    import datetime

    import torch.distributed as dist

    seconds = init_timeout()
    coordinator = (
        f"MASTER_ADDR={os.environ['MASTER_ADDR']}, "
        f"MASTER_PORT={os.environ['MASTER_PORT']}"
    )
    timeout = datetime.timedelta(seconds=seconds)
    prefix = f"keras_dsd/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}"
    try:
        store, _, _ = next(
            dist.rendezvous("env://", rank, world_size, timeout=timeout)
        )
        store.set(f"{prefix}/world_size/{rank}", str(world_size))
        peers = range(1, world_size) if rank == 0 else [0]
        others = {i: int(store.get(f"{prefix}/world_size/{i}")) for i in peers}
    except RuntimeError as error:
        # `DistStoreError` and `DistNetworkError` are `RuntimeError`s;
        # others (a port already in use) keep their own message.
        message = str(error).lower()
        if "timed out" not in message and "timeout" not in message:
            raise
        raise start_up_timeout(seconds, coordinator) from error
    check_same_count("WORLD_SIZE", world_size, rank, others)
    # The group's own keys, apart from other users of the store (as
    # `init_process_group` does); its collectives keep their default
    # timeout.
    return dist.PrefixStore("default_pg", store)


def _leave_process_group():
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def setup_data_parallel(devices, tpu, multi_host):
    """One process per device under `torchrun` (`initialize_processes`).
    Returns the fields of a `DataParallelContext`."""
    world_size, rank = initialize_processes(multi_host)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "num_replicas": world_size,
        "num_processes": world_size,
        "process_index": rank,
        "description": (
            f"{world_size} process(es) on {device}"
            + (", gradient all-reduce" if world_size > 1 else "")
        ),
    }


def process_values(value):
    """`value` (a number) of every process, as a list in process order."""
    import torch.distributed as dist

    group = _process_group()
    if group is None or group[1] == 1:
        return [value]
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mine = torch.tensor([float(value)], dtype=torch.float64, device=device)
    pieces = [torch.empty_like(mine) for _ in range(group[1])]
    dist.all_gather(pieces, mine)
    return [float(p.item()) for p in pieces]


def mean_over_processes(logs):
    """The mean over processes of each logged value (each process's
    metrics average its own shard; the shards are the same size, so the
    mean of the means is the global batch's mean). One all-reduce."""
    import torch.distributed as dist

    group = _process_group()
    if group is None or group[1] == 1 or not logs:
        return logs
    keys = sorted(logs)
    values = torch.stack(
        [
            torch.as_tensor(
                keras.ops.convert_to_numpy(logs[k]), dtype=torch.float64
            ).reshape(())
            for k in keys
        ]
    )
    if dist.get_backend() == "nccl":
        values = values.cuda()
    dist.all_reduce(values)
    values = (values / group[1]).cpu()
    return {k: float(v) for k, v in zip(keys, values)}


def gather_replicas(x):
    """`x` of every process, concatenated along axis 0, in a multi-process
    run; else `x`. For logged values only: no gradient flows back."""
    import torch.distributed as dist

    group = _process_group()
    if group is None or group[1] == 1:
        return x
    x = x.detach().contiguous()
    pieces = [torch.empty_like(x) for _ in range(group[1])]
    dist.all_gather(pieces, x)
    return torch.cat(pieces, dim=0)


def value_and_grad(fn, variables, tensor):
    """For `keras_dsd.testing.test_utils.value_and_grad`: `fn(tensor)` or
    `fn()` reading `variables`, and its gradients (a list; `None` where
    nothing reached an input)."""
    if variables is None:
        tensor = tensor.detach().clone().requires_grad_(True)
        sources = [tensor]
        value = fn(tensor)
    else:
        sources = [v.value for v in variables]
        value = fn()
    if not value.requires_grad:
        # Nothing reached the inputs (e.g. only through a stop-gradient).
        return value, [None] * len(sources)
    grads = torch.autograd.grad(value, sources, allow_unused=True)
    return value, list(grads)


def eager_loops():
    """PyTorch runs `fori_loop` bodies once per iteration already."""
    return contextlib.nullcontext()
