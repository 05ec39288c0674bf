"""Process settings for JAX on the CPU, made when `keras_dsd` is imported
(`configure`): glibc's malloc keeps the blocks XLA frees after every
step, and JAX runs each computation on the calling thread. Imports no
Keras, so that it can run before Keras imports TensorFlow
(`keras_dsd.backend`)."""

import ctypes
import functools
import importlib.metadata
import importlib.util
import os
import pkgutil
import platform

# glibc's `mallopt` parameters (<malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def configure():
    """Both settings below, where they apply."""
    keep_freed_host_memory()
    dispatch_synchronously()


def keep_freed_host_memory():
    """Has glibc's malloc keep freed memory for reuse, when JAX will run
    on the CPU. Called when `keras_dsd` is imported (`configure`).

    XLA's CPU client allocates each run's temporary buffers as one block
    (1.88 GB for a dsd_s batch-4 training step, 170 MB for dsd_tiny at
    batch 64) and frees it after the run. glibc serves a block that large
    with `mmap` and returns it with `munmap`, so every step touches fresh
    pages: the kernel faults and zeroes 4 KiB at a time, about 460,000
    page faults and 0.7 s of system time per dsd_s step on the project's
    2-core machine (docs/speed.md). TensorFlow's XLA keeps its buffers in
    its own allocator and faults none. Here malloc is set to take all
    memory from its main heap (`M_MMAP_MAX=0`, `M_ARENA_MAX=1`: XLA's
    worker threads would otherwise allocate from heaps of their own,
    which glibc caps at 64 MiB and so `mmap` again) and never give it
    back (`M_TRIM_THRESHOLD=-1`); the next step reuses the same block.
    The process then holds its peak host memory until it exits.

    Best effort: a thread that allocated before this call keeps an arena
    of its own, and an XLA thread that glibc later hands that arena maps
    its block afresh on every run. With `dispatch_synchronously` the
    calling thread allocates the temporaries, from the main heap; with
    JAX's asynchronous dispatch its own threads do. Importing Keras
    imports TensorFlow, one of whose threads allocates, so
    `keras_dsd.backend` calls this before it imports Keras when
    `KERAS_BACKEND=jax` names the backend (`jax_backend_test.py` counts
    the arenas). With the backend set in `keras.json`, or Keras imported
    before `keras_dsd`, it runs after Keras' import.

    Only where it helps and only before JAX starts: not if `jax` has
    already initialized its backends (threads that already allocated keep
    their heaps), not if a GPU or TPU plugin of JAX is installed or
    `JAX_PLATFORMS` names another platform first, not outside glibc
    (Linux). `KERAS_DSD_KEEP_HOST_MEMORY=0` leaves malloc alone.

    Returns whether malloc was set.
    """
    if os.environ.get("KERAS_DSD_KEEP_HOST_MEMORY", "1") == "0":
        return False
    if platform.libc_ver()[0] != "glibc" or not _jax_will_run_on_cpu():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(
        libc.mallopt(parameter, value) == 1
        for parameter, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, -1),
        )
    )


def dispatch_synchronously():
    """Has JAX run CPU computations on the calling thread
    (`jax_cpu_enable_async_dispatch=False`), when JAX will run on the CPU.

    By default JAX hands each CPU computation to a pool of threads of its
    own and returns at once. In `fit` the training loop then prepares the
    next step while XLA's threads compute, on the same cores: dsd_tiny at
    batch 32 in `fit` took 52-56 ms a step with asynchronous dispatch and
    44-45 ms without on the project's 2-core machine (`train_throughput.py
    --fit`, docs/speed.md), and openxla/xla#18608 reports up to 2x on
    inference from the threads it adds. The dispatching threads also
    allocate each step's temporaries, and one handed a malloc arena of
    its own maps them afresh (`keep_freed_host_memory`); the calling
    thread allocates from the main heap.

    Left alone where JAX will not run on the CPU or has started, and where
    `JAX_CPU_ENABLE_ASYNC_DISPATCH` is set: the user's choice. Returns
    whether the setting was made.
    """
    if "JAX_CPU_ENABLE_ASYNC_DISPATCH" in os.environ:
        return False
    if not _jax_will_run_on_cpu():
        return False
    import jax

    try:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    except AttributeError:  # older JAX: no flag, no asynchronous CPU dispatch
        return False
    return True


def _jax_will_run_on_cpu():
    """Whether JAX's default platform will be the CPU, decided without
    initializing JAX (which `jax.distributed.initialize` must precede).
    False where it cannot be decided: backends already initialized."""
    if importlib.util.find_spec("jax") is None:
        return False  # Keras says what is missing.
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return False
    return _default_platform_is_cpu(
        jax.config.jax_platforms, _accelerator_plugins()
    )


def _default_platform_is_cpu(platforms, plugins):
    """`platforms`: JAX's `jax_platforms` setting ("cuda,cpu", or empty
    for JAX's own choice); `plugins`: the accelerator plugins installed."""
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not plugins


@functools.cache
def _accelerator_plugins():
    """The JAX accelerator plugins installed (CUDA, ROCm, TPU, ...): the
    packages JAX itself looks for when it starts. Looked up once per
    process: both settings ask."""
    plugins = [
        e.name for e in importlib.metadata.entry_points(group="jax_plugins")
    ]
    if importlib.util.find_spec("jax_plugins") is not None:
        import jax_plugins

        plugins += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
    if importlib.util.find_spec("libtpu") is not None:
        plugins.append("libtpu")
    return plugins
