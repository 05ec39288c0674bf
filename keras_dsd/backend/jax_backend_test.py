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
import resource

import keras_dsd  # noqa: F401
import jax
import jax.numpy as jnp

x = jnp.ones((8192, 1024))
# sin(x) and its cumulative sum do not fuse: 64 MiB of temporaries.
run = jax.jit(lambda x: jnp.cumsum(jnp.sin(x), axis=0).sum())
temp = run.lower(x).compile().memory_analysis().temp_size_in_bytes
# Warm up: the heap grows to its peak (up to two runs' temporaries: the
# next run may start before the last one's are freed).
for _ in range(10):
    run(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    run(x).block_until_ready()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(temp, (after - before) / 8)
"""


def _page_faults_per_run(keep_host_memory):
    import os
    import subprocess
    import sys

    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        KERAS_DSD_KEEP_HOST_MEMORY=keep_host_memory,
    )
    result = subprocess.run(
        [sys.executable, "-c", _PAGE_FAULTS_PER_RUN],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    temp, faults = result.stdout.split()
    return int(temp), float(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc")
def test_freed_host_memory_is_reused_across_runs():
    import resource

    page = resource.getpagesize()
    temp, kept = _page_faults_per_run("1")
    _, released = _page_faults_per_run("0")
    print(f"temp {temp} bytes; page faults per run {kept} / {released}")
    assert temp == 64 * 2**20
    # Without the setting every run faults in its temporaries afresh, one
    # fault per page. With it the pages of earlier runs are reused: no
    # faults on an idle machine; on a loaded one some runs still fault
    # (XLA threads sharing an arena that a thread made before the import
    # of keras_dsd, docs/speed.md), about a third of them in a check here.
    assert released >= temp / page
    assert kept <= 0.5 * released


def test_default_platform_is_decided_without_starting_jax():
    import jax

    from keras_dsd.backend import jax_backend

    decide = jax_backend._default_platform_is_cpu
    assert decide("cpu", plugins=["cuda12"])
    assert decide("cpu,cuda", plugins=[])
    assert not decide("cuda,cpu", plugins=[])
    assert not decide("tpu", plugins=[])
    assert decide("", plugins=[])
    assert decide(None, plugins=[])
    assert not decide("", plugins=["libtpu"])
    jax.devices()  # JAX has started: too late to change malloc.
    assert not jax_backend.keep_freed_host_memory()


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
