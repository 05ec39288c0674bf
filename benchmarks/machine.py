"""The machine description that every benchmark prints with its numbers,
and the peak rates that utilisation is measured against."""

import os
import platform
import time

# Published dense (no sparsity) peak FLOP/s per device name, from the
# vendors' datasheets: NVIDIA H100/H200 ("H100 Tensor Core GPU" and "H200
# Tensor Core GPU" datasheets, SXM figures: 989.4 TFLOP/s BF16, 494.7 TF32,
# 66.9 FP32; the sheets print twice these for "with sparsity"), H100 PCIe
# (756 / 378 / 51.2), A100 ("A100 Tensor Core GPU" datasheet: 312 BF16, 156
# TF32, 19.5 FP32), L4 (121 / 60 / 30.3), A10G/A10 (125 / 62.5 / 31.2).
# "float32" uses the TF32 tensor-core rate, what XLA on GPU and
# `torch.backends.cuda.matmul.allow_tf32` give float32 matmuls.
# Substring match on the device name, most specific first.
GPU_PEAKS = (
    ("H200", {"bfloat16": 989.4e12, "float32": 494.7e12}),
    ("H100 PCIe", {"bfloat16": 756e12, "float32": 378e12}),
    ("H100", {"bfloat16": 989.4e12, "float32": 494.7e12}),
    ("A100", {"bfloat16": 312e12, "float32": 156e12}),
    ("L4", {"bfloat16": 121e12, "float32": 60e12}),
    ("A10", {"bfloat16": 125e12, "float32": 62.5e12}),
)


def describe_machine():
    """CPU model, core counts, load average, OS and Python version."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = (
        len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count()
    )
    return (
        f"{cpu}, {os.cpu_count()} cores ({usable} usable), load average "
        f"{load_average()}; {platform.platform()}, Python "
        f"{platform.python_version()}"
    )


def load_average():
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def published_peak(device_name, dtype):
    """Dense peak FLOP/s of a known GPU for `dtype` ("bfloat16" or
    "float32"), or `None` for an unknown device."""
    for key, peaks in GPU_PEAKS:
        if key.lower() in device_name.lower():
            return peaks.get(dtype)
    return None


def best_seconds(fn, repeats=10):
    """The shortest of `repeats` timed calls of `fn`, after one untimed
    call (compilation, warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rate(backend, dtype="float32", size=2048, repeats=10):
    """The best FLOP/s of a square `size` matmul on `backend`'s default
    device, through the backend's own compiled (JAX, TF) or eager (torch)
    matmul (on torch, the better of `torch.matmul` and keras_dsd's oneDNN
    product): the dense rate this run can reach, to measure a model
    against."""
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        a = jnp.ones((size, size), dtype)
        product = jax.jit(jnp.matmul)
        runs = [lambda: product(a, a).block_until_ready()]
    elif backend == "tensorflow":
        import tensorflow as tf

        a = tf.ones((size, size), dtype)
        product = tf.function(tf.matmul, jit_compile=True)
        runs = [lambda: product(a, a).numpy()]
    elif backend == "torch":
        import torch

        from keras_dsd.backend import torch_backend

        device = "cuda" if torch.cuda.is_available() else "cpu"
        a = torch.ones((size, size), dtype=getattr(torch, dtype), device=device)

        def synchronize():
            if device == "cuda":
                torch.cuda.synchronize()

        # torch's matmul and the product keras_dsd's Dense layers use
        # (oneDNN on the CPU, `torch_backend.matmul`): both are this
        # torch's dense rate, and the better one counts.
        runs = [
            lambda product=product: (product(a, a), synchronize())
            for product in (torch.matmul, torch_backend.matmul)
        ]
    else:
        raise ValueError(f"matmul_rate: unknown backend={backend!r}.")
    best = min(best_seconds(run, repeats) for run in runs)
    return 2 * size**3 / best
