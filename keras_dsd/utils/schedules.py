"""Learning-rate schedules and the default learning rate."""

import keras

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
    optimizer updates, then constant; the plain `learning_rate` when
    `warmup_steps` is 0."""
    if not warmup_steps:
        return learning_rate
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=1,
        alpha=1.0,  # constant after the warm-up
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )
