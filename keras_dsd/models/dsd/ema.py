"""Exponential moving averages of a network's weights: DSD's teacher and
sampling weights.

After every optimizer step that changed the trained weights `theta`, each
average `xi` moves towards them,

```
xi <- m_k * xi + (1 - m_k) * theta,   m_k = min(m, (1 + k) / (10 + k))
```

where `k` counts the updates done so far (the warm-up keeps the early
averages from remembering the random initialisation for thousands of
steps). `DSDImageGenerator` keeps two: the teacher (`m = 0.999`), whose
encoder gives the diffusion target in every step's loss, and the sampling
weights (`m = 0.9999`) that `generate` uses.

Why not Keras' own `optimizer(use_ema=True)`: it keeps one average, inside
the optimizer's state, as plain variables rather than a network that can
run a forward pass (the teacher must encode every batch); it has no
warm-up (the first step copies the weights, then the momentum is fixed);
and at the end of `fit` it overwrites the trained weights with the average
(`finalize_variable_values`), while DSD trains on from the online weights
and keeps the averages beside them. The optimizer's state is also not part
of a preset, and the averages must be.

These functions read and assign variables in the usual way; under JAX,
`keras_dsd.backend.train_step_with_updates` runs them in a stateless scope
and writes the assignments into the training state.
"""

import numpy as np
from keras import ops

from keras_dsd import backend


def check_decay(value, name):
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1), got {name}={value!r}.")


def frozen_copy(network, name):
    """A non-trainable copy of `network` with its own weight buffers."""
    config = {**network.get_config(), "name": name}
    copy = network.__class__.from_config(config)
    for target, source in zip(copy.weights, network.weights):
        # Copy through numpy so that no two variables share a buffer (JAX
        # donates the training state's buffers).
        target.assign(np.array(ops.convert_to_numpy(source)))
    copy.trainable = False
    return copy


def applying_optimizer(optimizer):
    """The optimizer that applies the updates: the inner one of a
    `LossScaleOptimizer` (which does not count the steps it skipped for
    non-finite gradients), else `optimizer` itself."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def optimizer_updates(optimizer):
    """How many updates `optimizer` has applied to the weights, read from
    `applying_optimizer(optimizer)`; with gradient accumulation, one per
    accumulated group. A copy, since PyTorch's variables change in place.
    """
    return ops.copy(applying_optimizer(optimizer).iterations)


def warmup_decay(decay, step):
    """`min(decay, (1 + k) / (10 + k))` for `k = step` updates done."""
    k = ops.cast(step, "float32")
    return ops.minimum(
        ops.convert_to_tensor(decay, "float32"), (1 + k) / (10 + k)
    )


def update_averages(averages, source, step, applied, warmup=True):
    """Moves each average towards `source`'s weights, if `applied`.

    Args:
        averages: list of `(network, decay)`: networks with the same
            weights as `source`, and their decays `m`.
        source: the trained network.
        step: int variable, the updates done so far (`k`); it grows by one
            when `applied`.
        applied: boolean tensor: whether the optimizer step just changed
            `source`'s weights. When false, nothing moves.
        warmup: use `m_k = min(m, (1 + k) / (10 + k))` instead of `m`.
    """
    k = step.value
    for network, decay in averages:
        decay_k = (
            warmup_decay(decay, k)
            if warmup
            else ops.convert_to_tensor(decay, "float32")
        )
        decay_k = ops.where(applied, decay_k, 1.0)
        backend.move_averages(network.weights, source.weights, decay_k)
    step.assign(ops.cast(k + ops.cast(applied, k.dtype), step.dtype))
