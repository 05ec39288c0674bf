"""Attention forward and backward, timed alone on the current backend.

Times `sum(attention(q, k, v) * g)` and its gradients with respect to q,
k and v at a DSD shape (`(B, N, heads, head_dim)`; the default is dsd_s
at batch 4 times the four passes of a training step) for Keras'
`keras.ops.dot_product_attention` and the library's
`keras_dsd.backend.dot_product_attention` (compiled: `jax.jit`,
`tf.function(jit_compile=True)`; eager on PyTorch), alternating the two,
and prints each one's best and median milliseconds. On JAX it also prints
the op time per XLA op kind of each (`jax.profiler`; times under the
profiler are longer than without it).

    KERAS_BACKEND=jax python benchmarks/attention_step.py
"""

import argparse
import statistics
import time

import keras
import machine  # benchmarks/machine.py
import numpy as np
from train_throughput import print_conditions  # benchmarks/

from keras_dsd import backend


def compiled_step(attention, g):
    """`(q, k, v) -> (output, (dq, dk, dv))` of `sum(attention * g)`."""
    name = keras.backend.backend()
    if name == "jax":
        import jax

        def step(q, k, v):
            out, vjp = jax.vjp(attention, q, k, v)
            return out, vjp(g)

        return jax.jit(step)
    if name == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def step(q, k, v):
            with tf.GradientTape() as tape:
                tape.watch([q, k, v])
                out = attention(q, k, v)
                loss = tf.reduce_sum(out * g)
            return out, tape.gradient(loss, [q, k, v])

        return step
    import torch

    def step(q, k, v):
        q, k, v = (x.detach().requires_grad_(True) for x in (q, k, v))
        out = attention(q, k, v)
        return out, torch.autograd.grad((out * g).sum(), [q, k, v])

    return step


def wait(result):
    keras.tree.map_structure(keras.ops.convert_to_numpy, result)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()

    load_before = machine.load_average()
    print_conditions(load_before)
    shape = (args.batch_size, args.tokens, args.heads, args.head_dim)
    rng = np.random.default_rng(0)
    q, k, v, g = (
        keras.ops.convert_to_tensor(rng.normal(size=shape), "float32")
        for _ in range(4)
    )
    forms = {
        "keras.ops.dot_product_attention": keras.ops.dot_product_attention,
        "keras_dsd.backend.dot_product_attention": (
            backend.dot_product_attention
        ),
    }
    steps = {name: compiled_step(fn, g) for name, fn in forms.items()}
    times = {name: [] for name in steps}
    for step in steps.values():
        wait(step(q, k, v))
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                wait(step(q, k, v))
            times[name].append((time.perf_counter() - start) / args.calls)
    flops = 3 * 4 * np.prod(shape) * args.tokens  # two products, x3 for grads
    print(
        f"backend={keras.backend.backend()} q/k/v {shape} float32, "
        f"{flops / 1e9:.2f} GFLOP per forward + backward"
    )
    for name, seconds in times.items():
        best, median = min(seconds), statistics.median(seconds)
        print(
            f"  {name}: best {best * 1e3:.1f} ms, median "
            f"{median * 1e3:.1f} ms ({flops / best / 1e9:.0f} GFLOP/s best)"
        )
    if keras.backend.backend() == "jax":
        from profile_step import jax_op_times  # benchmarks/

        for name, step in steps.items():
            op_times = jax_op_times(
                lambda: [wait(step(q, k, v)) for _ in range(args.calls)],
                args.calls,
            )
            total = sum(op_times.values())
            print(f"  {name}, op time under the profiler: {total * 1e3:.1f} ms")
            for op, seconds in op_times.most_common(6):
                print(f"      {seconds * 1e3:6.1f} ms  {op}")


if __name__ == "__main__":
    main()
