import platform
import re

import keras
import numpy as np
import pytest

from keras_dsd import backend
from keras_dsd.layers import transformer_block

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX backend module"
)


def _largest_loop_fusion(hlo_text):
    """Operand count of the compiled program's largest elementwise fusion."""
    counts = [
        operands.count("%")
        for operands in re.findall(r"fusion\((.*?)\), kind=kLoop", hlo_text)
    ]
    return max(counts)


def _stack_gradient_hlo(num_blocks, monkeypatch=None):
    import jax

    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(2, 16, 32)).astype("float32")
    conditioning = rng.normal(size=(2, 32)).astype("float32")
    blocks = [
        transformer_block.DSDTransformerBlock(32, num_heads=2)
        for _ in range(num_blocks)
    ]
    for block in blocks:
        block.build(tokens.shape, conditioning.shape)

    def loss(tokens):
        for block in blocks:
            tokens = block(tokens, conditioning)
        return (tokens**2).sum()

    return jax.jit(jax.grad(loss)).lower(tokens).compile().as_text()


def _bits(x):
    x = np.asarray(x)
    return x.view(np.uint16 if x.dtype.itemsize == 2 else np.uint32)


def test_gradient_barrier_passes_values_and_gradients_bit_for_bit():
    import jax
    import jax.numpy as jnp

    from keras_dsd.backend import jax_backend

    barrier = jax.jit(jax_backend.gradient_barrier)
    for dtype in ("float32", "bfloat16"):
        # The input's first element decides the cond's predicate: every bit
        # pattern, special values included, must take the identity.
        for first in (0.0, -0.0, np.inf, -np.inf, np.nan, 3.0):
            x = jnp.asarray([first, -2.0, 0.25], dtype)
            cotangent = jnp.asarray([np.nan, -0.0, 7.0], dtype)
            value, vjp = jax.vjp(barrier, x)
            (gradient,) = jax.jit(vjp)(cotangent)
            assert gradient.dtype == cotangent.dtype
            np.testing.assert_array_equal(_bits(value), _bits(x))
            np.testing.assert_array_equal(_bits(gradient), _bits(cotangent))
            # Forward mode too (a custom_vjp would refuse it).
            _, tangent = jax.jvp(barrier, (x,), (cotangent,))
            np.testing.assert_array_equal(_bits(tangent), _bits(cotangent))


def test_gradient_barrier_survives_xla_on_cpu():
    import jax

    from keras_dsd.backend import jax_backend

    if jax.default_backend() != "cpu":
        pytest.skip("the barrier is a CPU-only rewrite")
    hlo = (
        jax.jit(
            jax.grad(lambda x: (jax_backend.gradient_barrier(x) ** 2).sum())
        )
        .lower(np.ones((4, 8), "float32"))
        .compile()
        .as_text()
    )
    assert " conditional(" in hlo


def test_eager_gradients_trace_the_barrier_once(monkeypatch):
    # Eager steps (unit tests, `run_eagerly=True`) take the barrier's
    # gradient outside any jit: its `lax.cond` must reuse the branches it
    # traced the first time instead of tracing new ones at every call.
    import jax

    from keras_dsd.backend import jax_backend

    if jax.default_backend() != "cpu":
        pytest.skip("the barrier is a CPU-only rewrite")
    traces = []

    def identity(x):
        traces.append(x.shape)
        return x

    monkeypatch.setattr(jax_backend, "_identity", identity)
    grad = jax.grad(lambda x: (jax_backend.gradient_barrier(x) ** 2).sum())
    x = np.arange(6, dtype="float32").reshape(2, 3)
    for _ in range(3):
        np.testing.assert_array_equal(grad(x), 2 * x)
    assert traces == [(2, 3)]


def test_residual_gradient_fusions_do_not_grow_with_depth(monkeypatch):
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("the barrier is a CPU-only rewrite")
    with_barrier = [
        _largest_loop_fusion(_stack_gradient_hlo(n)) for n in (2, 6)
    ]
    monkeypatch.setattr(backend, "gradient_barrier", lambda x: x)
    without = [_largest_loop_fusion(_stack_gradient_hlo(n)) for n in (2, 6)]
    print("largest loop fusion, 2 and 6 blocks:", with_barrier, without)
    assert with_barrier[1] == with_barrier[0]
    assert without[1] > without[0]


def test_gelu_gradient_is_phi_plus_x_times_density():
    import math

    import jax

    from keras_dsd.backend import jax_backend

    x = np.array([-4.0, -1.5, -0.3, 0.0, 0.7, 2.0, 5.0], "float32")
    # d/dx x Phi(x) = Phi(x) + x phi(x), in double precision.
    expected = [
        0.5 * (1 + math.erf(v / math.sqrt(2)))
        + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
        for v in x
    ]
    grad = jax.jit(jax.vmap(jax.grad(jax_backend.gelu)))(x)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-6)


# Runs in a fresh process: `keras_dsd` must be imported before JAX starts.
_PAGE_FAULTS_PER_RUN = """
import ctypes
import os
import resource
import tempfile

import keras_dsd  # noqa: F401
import jax
import jax.numpy as jnp


def malloc_arenas():
    libc = ctypes.CDLL("libc.so.6")
    libc.fdopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.TemporaryFile() as f:
        stream = libc.fdopen(os.dup(f.fileno()), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        f.seek(0)
        return f.read().count(b"<heap nr=")


arenas = malloc_arenas()  # Keras (and TensorFlow) imported, JAX not started
x = jnp.ones((8192, 1024))
# sin(x) and its cumulative sum do not fuse: 64 MiB of temporaries.
run = jax.jit(lambda x: jnp.cumsum(jnp.sin(x), axis=0).sum())
temp = run.lower(x).compile().memory_analysis().temp_size_in_bytes
# Warm up: the heap grows to its peak (a few runs' temporaries: the next
# run may start before the last one's are freed).
for _ in range(20):
    run(x).block_until_ready()
faults = []
for _ in range(24):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    run(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(temp, arenas, *faults)
"""


def _fresh_process_output(script, **environ):
    """What `script` prints, run in a fresh Python process on JAX's CPU
    with `environ` set (the caller's `JAX_CPU_ENABLE_ASYNC_DISPATCH`
    removed unless `environ` gives one), in at most 10 minutes."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env.pop("JAX_CPU_ENABLE_ASYNC_DISPATCH", None)
    env.update(environ)
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return result.stdout


def _page_faults_per_run(keep_host_memory):
    """The temporaries' size, malloc's arena count after `import keras_dsd`
    and the page faults of each of 24 runs after 20, in a fresh process."""
    output = _fresh_process_output(
        _PAGE_FAULTS_PER_RUN, KERAS_DSD_KEEP_HOST_MEMORY=keep_host_memory
    )
    temp, arenas, *faults = map(int, output.split())
    return temp, arenas, faults


# 19 s (two fresh processes): full tier only.
@pytest.mark.large
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc")
def test_freed_host_memory_is_reused_across_runs():
    import resource

    page = resource.getpagesize()
    temp, arenas, kept = _page_faults_per_run("1")
    _, _, released = _page_faults_per_run("0")
    print(f"temp {temp} bytes; page faults per run {kept} / {released}")
    assert temp == 64 * 2**20
    # Set before Keras imports TensorFlow, whose threads would otherwise
    # make malloc arenas of their own; an XLA thread handed one of those
    # maps its block afresh on every run.
    assert arenas == 1
    # Without the setting every run maps its temporaries afresh and faults
    # them in, one fault per page: every run faults a whole block.
    block = temp / page
    assert sum(faults >= block for faults in released) == len(released)
    # With it the pages of earlier runs are reused once the heap has grown
    # (docs/speed.md), and most runs fault nothing. The heap may still grow
    # by a block now and then (a small allocation kept inside the freed
    # block splits it), so one run in 8 re-faulting a whole block is seen
    # on an idle machine too. The bound lets a quarter of the runs do so;
    # the regression it guards (malloc not set, or the temporaries taken
    # from an arena that maps them) re-faults in every run, all 24.
    assert sum(faults >= block / 2 for faults in kept) <= len(kept) // 4


# `ROUNDS` products of 2048 x 2048 matrices, ~17 GFLOP (tens of ms) each.
# The process ends as soon as it has printed: a long computation that JAX
# still runs in the background is not waited for.
_READY_ON_RETURN = """
import os
import sys

import keras_dsd  # noqa: F401
import jax
import jax.numpy as jnp

a = jnp.ones((2048, 2048)) / 2048
run = jax.jit(
    lambda a, rounds: jax.lax.fori_loop(0, rounds, lambda i, b: a @ b, a).sum()
)
run(a, 1).block_until_ready()  # compiles: the rounds are an argument
print(run(a, int(os.environ["ROUNDS"])).is_ready())
sys.stdout.flush()
os._exit(0)
"""


def _ready_on_return(rounds, **environ):
    """Whether a JAX CPU computation of `rounds` matrix products has
    finished when its call returns, in a fresh process that imports
    `keras_dsd` with `environ` set."""
    output = _fresh_process_output(
        _READY_ON_RETURN, ROUNDS=str(rounds), **environ
    )
    return {"True": True, "False": False}[output.strip()]


# 11 s (two fresh processes): full tier only.
@pytest.mark.large
def test_cpu_computations_run_on_the_calling_thread():
    # Two products, tens of ms: dispatched asynchronously (the regression)
    # the call returns long before they finish.
    assert _ready_on_return(2)
    # The user's own setting wins: JAX's default, asynchronous dispatch.
    # 10,000 products (minutes on any CPU), so that no pause of this
    # thread, however loaded the machine, lets them finish before the
    # check.
    assert not _ready_on_return(10_000, JAX_CPU_ENABLE_ASYNC_DISPATCH="true")


def test_a_jax_without_the_dispatch_flag_is_left_alone(monkeypatch):
    import jax

    from keras_dsd.backend import jax_cpu

    def update(name, value):  # as JAX answers an option it does not have
        raise AttributeError(f"Unrecognized config option: {name}")

    monkeypatch.delenv("JAX_CPU_ENABLE_ASYNC_DISPATCH", raising=False)
    monkeypatch.setattr(jax_cpu, "_jax_will_run_on_cpu", lambda: True)
    monkeypatch.setattr(jax.config, "update", update)
    assert not jax_cpu.dispatch_synchronously()


def test_default_platform_is_decided_without_starting_jax():
    import jax

    from keras_dsd.backend import jax_cpu

    decide = jax_cpu._default_platform_is_cpu
    assert decide("cpu", plugins=["cuda12"])
    assert decide("cpu,cuda", plugins=[])
    assert not decide("cuda,cpu", plugins=[])
    assert not decide("tpu", plugins=[])
    assert decide("", plugins=[])
    assert decide(None, plugins=[])
    assert not decide("", plugins=["libtpu"])
    jax.devices()  # JAX has started: too late to change either setting.
    assert not jax_cpu.keep_freed_host_memory()
    assert not jax_cpu.dispatch_synchronously()


def _entry_computation(fn, *args):
    import jax

    text = jax.jit(fn).lower(*args).compile().as_text()
    return text[text.index("ENTRY") :]


def test_kernel_gradient_reads_the_output_gradient_as_it_is():
    import jax
    import jax.numpy as jnp

    from keras_dsd.backend import jax_backend

    if jax.default_backend() != "cpu":
        pytest.skip("the 2-D product is a CPU-only rewrite")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 64, 32)).astype("float32")
    kernel = rng.normal(size=(32, 48)).astype("float32")

    def kernel_gradient_dot(product):
        hlo = _entry_computation(
            jax.grad(lambda k: jnp.sum(jnp.sin(product(x, k)))), kernel
        )
        # The (32, 48) kernel gradient: x^T (256, 32) times the output
        # gradient, (256, 48) as computed or (48, 256) transposed.
        (dot,) = re.findall(r"f32\[32,48\]\S* dot\(.*", hlo)
        return dot

    assert "rhs_contracting_dims={0}" in kernel_gradient_dot(jax_backend.matmul)
    # What the batched product compiles to: a transposed copy first.
    assert "rhs_contracting_dims={1}" in kernel_gradient_dot(keras.ops.matmul)
