"""The dsd_s training step's matmul shapes, timed alone on one backend.

For each dense layer shape of a dsd_s block at batch 4 (1,024 tokens of
width 512; qkv, attention output, MLP in and out), the GFLOP/s of the
forward product `x @ w`, the input gradient `g @ w.T` and the weight
gradient `x.T @ g`, each compiled alone (JAX `jax.jit`, TensorFlow
`tf.function(jit_compile=True)`) or eager (PyTorch: `torch.matmul`, and
the forward + backward of `keras_dsd.backend.torch_backend.matmul`, the
product `keras_dsd.layers.Dense` uses). Best of 20 calls. Compare with the
rate the same products reach inside a training step
(`benchmarks/profile_step.py`).

    KERAS_BACKEND=jax python benchmarks/dot_shapes.py
"""

import os

from machine import best_seconds  # benchmarks/machine.py

SHAPES = [  # (tokens, in, out)
    (1024, 512, 1536),
    (1024, 512, 512),
    (1024, 512, 2048),
    (1024, 2048, 512),
]


def products(backend, m, k, n):
    """`{name: (callable, flops)}` for one layer shape."""
    flops = 2 * m * k * n
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        x, w, g = jnp.ones((m, k)), jnp.ones((k, n)), jnp.ones((m, n))
        forms = {
            "x @ w": (jax.jit(lambda x, w: x @ w), x, w),
            "g @ w.T": (jax.jit(lambda g, w: g @ w.T), g, w),
            "x.T @ g": (jax.jit(lambda x, g: x.T @ g), x, g),
        }
        return {
            name: (lambda f=f, a=a, b=b: f(a, b).block_until_ready(), flops)
            for name, (f, a, b) in forms.items()
        }
    if backend == "tensorflow":
        import tensorflow as tf

        x, w, g = tf.ones((m, k)), tf.ones((k, n)), tf.ones((m, n))

        def compiled(fn):
            return tf.function(fn, jit_compile=True)

        forms = {
            "x @ w": (compiled(lambda x, w: x @ w), x, w),
            "g @ w.T": (
                compiled(lambda g, w: tf.matmul(g, w, transpose_b=True)),
                g,
                w,
            ),
            "x.T @ g": (
                compiled(lambda x, g: tf.matmul(x, g, transpose_a=True)),
                x,
                g,
            ),
        }
        return {
            name: (lambda f=f, a=a, b=b: f(a, b).numpy(), flops)
            for name, (f, a, b) in forms.items()
        }
    import torch

    from keras_dsd.backend import torch_backend

    x = torch.ones((m, k), requires_grad=True)
    w = torch.ones((k, n), requires_grad=True)
    g = torch.ones((m, n))

    def library_step():
        torch_backend.matmul(x, w).backward(g)

    xd, wd = x.detach(), w.detach()
    return {
        "x @ w": (lambda: torch.matmul(xd, wd), flops),
        "g @ w.T": (lambda: torch.matmul(g, wd.t()), flops),
        "x.T @ g": (lambda: torch.matmul(xd.t(), g), flops),
        "Dense fwd+bwd": (library_step, 3 * flops),
        "x.T copy": (lambda: xd.t().contiguous(), 0),
    }


def main():
    import keras

    backend = keras.backend.backend()
    print(f"backend={backend}, {os.cpu_count()} CPU cores")
    for m, k, n in SHAPES:
        cells = []
        for name, (fn, flops) in products(backend, m, k, n).items():
            seconds = best_seconds(fn, repeats=20)
            if flops:
                cells.append(f"{name} {flops / seconds / 1e9:.0f} GFLOP/s")
            else:
                cells.append(f"{name} {1000 * seconds:.2f} ms")
        print(f"{m}x{k}x{n}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
