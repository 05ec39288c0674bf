"""Keras' cost per layer call, and its share of PyTorch's eager step.

On JAX and TensorFlow the layers' Python runs once, while the training
step is traced and compiled; PyTorch runs it at every step. This counts
the Keras layer calls (`keras.layers.Layer.__call__`) of one
`train_on_batch` step of a DSD preset, times what `Layer.__call__` adds
around a layer's own `call` (a `keras_dsd.layers.Dense` of the preset's
width on a token tensor of the step's shape, called both ways,
alternating), and prints their product next to the step's time.

    KERAS_BACKEND=torch python benchmarks/layer_calls.py --preset dsd_tiny \\
        --batch-size 32
"""

import collections
import statistics
import time

import keras
import machine  # benchmarks/machine.py
import numpy as np
from train_throughput import model_and_batch  # benchmarks/
from train_throughput import preset_parser
from train_throughput import print_conditions

import keras_dsd


def count_layer_calls(model, images, labels):
    """`{layer class name: calls}` of the Keras layer calls (nested ones
    included) in one training step."""
    calls = collections.Counter()
    original = keras.layers.Layer.__call__

    def counting_call(self, *args, **kwargs):
        calls[type(self).__name__] += 1
        return original(self, *args, **kwargs)

    keras.layers.Layer.__call__ = counting_call
    try:
        model.train_on_batch(images, labels)
    finally:
        keras.layers.Layer.__call__ = original
    return calls


def mean_seconds(fn, calls):
    """The mean time of `calls` calls of `fn`."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main():
    parser = preset_parser(__doc__, batch_size=32)
    parser.add_argument(
        "--steps",
        type=int,
        default=20,
        help="Timed training steps, split over the rounds (at least one "
        "per round).",
    )
    parser.add_argument(
        "--rounds", type=int, default=7, help="Alternating timing rounds."
    )
    args = parser.parse_args()
    if keras.backend.backend() != "torch":
        raise SystemExit(
            "layer_calls.py: use KERAS_BACKEND=torch (on JAX and TensorFlow "
            "the layers run only while the step is traced)."
        )
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1.")
    load_before = machine.load_average()
    model, images, labels = model_and_batch(args.preset, args.batch_size)
    for _ in range(3):
        model.train_on_batch(images, labels)  # warm-up
    calls = count_layer_calls(model, images, labels)

    backbone = model.backbone
    tokens = (backbone.image_size // backbone.patch_size) ** 2
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).normal(
            size=(args.batch_size, tokens, backbone.hidden_dim)
        ),
        "float32",
    )
    dense = keras_dsd.layers.Dense(backbone.hidden_dim)
    dense.build(x.shape)
    through_keras, call_only, step = [], [], []
    for _ in range(args.rounds):
        through_keras.append(mean_seconds(lambda: dense(x), 200))
        call_only.append(mean_seconds(lambda: dense.call(x), 200))
        step.append(
            mean_seconds(
                lambda: model.train_on_batch(images, labels),
                max(1, args.steps // args.rounds),
            )
        )
    through_keras = statistics.median(through_keras)
    call_only = statistics.median(call_only)
    step = statistics.median(step)
    overhead = through_keras - call_only

    print_conditions(load_before)
    print(
        f"backend=torch preset={args.preset} batch={args.batch_size} "
        f"tokens={tokens} width={backbone.hidden_dim}"
    )
    print(f"training step: {step * 1e3:.1f} ms (median)")
    print(
        f"Keras layer calls per step: {calls.total()} ("
        + ", ".join(f"{n} {name}" for name, n in calls.most_common())
        + ")"
    )
    print(
        f"Dense({backbone.hidden_dim}) on {tuple(x.shape)}: "
        f"{through_keras * 1e6:.0f} us through Layer.__call__, "
        f"{call_only * 1e6:.0f} us calling its `call`: "
        f"{overhead * 1e6:.0f} us per layer call"
    )
    print(
        f"layer calls x that: {calls.total() * overhead * 1e3:.1f} ms per "
        f"step, {100 * calls.total() * overhead / step:.0f} % of the step"
    )


if __name__ == "__main__":
    main()
