"""Learning-rate schedules and the default learning rate."""

import keras
from keras import ops

from keras_dsd.utils import validation

# The learning rate `compile()` gives `dsd_tiny` (width 128), measured best
# in the digits recipe study (docs/recipe_study.md); other widths get it
# scaled as `1 / hidden_dim` (see `default_learning_rate`).
REFERENCE_LEARNING_RATE = 2e-3
REFERENCE_WIDTH = 128


def default_learning_rate(hidden_dim):
    """`2e-3 * 128 / hidden_dim`: the digits study's best AdamW learning
    rate for `dsd_tiny`, scaled inversely with the width, the usual rule
    for Adam on a transformer's hidden layers (e.g. muP, Yang et al. 2022,
    https://arxiv.org/abs/2203.03466). Measured only at width 128; it gives
    5e-4 for `dsd_s` (512) and 2.9e-4 for `dsd_b` (896), where DiT trains
    with 1e-4 at batch 256."""
    return REFERENCE_LEARNING_RATE * REFERENCE_WIDTH / hidden_dim


def warmup_schedule(learning_rate, warmup_steps):
    """A linear warm-up from 0 to `learning_rate` over `warmup_steps`
    optimizer updates, then constant (`LinearWarmup`); the plain
    `learning_rate` when `warmup_steps` is 0."""
    if not warmup_steps:
        return learning_rate
    return LinearWarmup(learning_rate, warmup_steps)


@keras.saving.register_keras_serializable(package="keras_dsd")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate * min(step / warmup_steps, 1)`: a linear warm-up from
    0 over `warmup_steps` optimizer updates, then constant.

    The values of Keras' `CosineDecay(0.0, decay_steps=1, alpha=1.0,
    warmup_target=learning_rate, warmup_steps=warmup_steps)`, which this
    library used before, computed without its `ops.cond`: on PyTorch that
    branch reads the step counter back to the host, a device sync in every
    optimizer step on a GPU (Keras evaluates the schedule twice per step),
    and a graph break under `torch.compile`.

    Args:
        learning_rate: float. The rate after the warm-up.
        warmup_steps: int >= 1. Optimizer updates of warm-up.
    """

    def __init__(self, learning_rate, warmup_steps):
        if isinstance(learning_rate, bool) or not (
            isinstance(learning_rate, (int, float)) and learning_rate >= 0
        ):
            raise ValueError(
                "`learning_rate` must be a float >= 0, got "
                f"learning_rate={learning_rate!r}."
            )
        self.learning_rate = float(learning_rate)
        self.warmup_steps = validation.check_positive_int(
            warmup_steps, "warmup_steps"
        )

    def __call__(self, step):
        fraction = ops.cast(step, "float32") / float(self.warmup_steps)
        learning_rate = ops.convert_to_tensor(self.learning_rate, "float32")
        return learning_rate * ops.minimum(fraction, 1.0)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
        }
