from unittest import mock

import keras
import numpy as np
import pytest

from keras_dsd.utils import schedules


def test_default_learning_rate_scales_inversely_with_the_width():
    # 2e-3 at width 128 (the recipe study's dsd_tiny); 1 / width elsewhere.
    assert schedules.default_learning_rate(128) == 2e-3
    np.testing.assert_allclose(schedules.default_learning_rate(512), 5e-4)
    np.testing.assert_allclose(
        schedules.default_learning_rate(896), 2e-3 / 7, rtol=1e-12
    )


def test_warmup_schedule_is_linear_then_constant():
    schedule = schedules.warmup_schedule(2e-3, 100)
    for step, expected in (
        (0, 0.0),
        (25, 5e-4),
        (50, 1e-3),
        (100, 2e-3),
        (101, 2e-3),
        (5000, 2e-3),
    ):
        value = float(keras.ops.convert_to_numpy(schedule(step)))
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-9)
    assert schedules.warmup_schedule(1e-4, 0) == 1e-4


def test_linear_warmup_has_the_values_of_the_cosine_decay_it_replaced():
    # Keras' CosineDecay with a warm-up and alpha=1 is the schedule this
    # library used before `LinearWarmup`: the same rates, step by step.
    previous = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=1,
        alpha=1.0,
        warmup_target=3e-4,
        warmup_steps=37,
    )
    schedule = schedules.LinearWarmup(3e-4, 37)
    steps = [0, 1, 2, 10, 36, 37, 38, 1000]
    ours = [float(keras.ops.convert_to_numpy(schedule(s))) for s in steps]
    theirs = [float(keras.ops.convert_to_numpy(previous(s))) for s in steps]
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0)
    # And by hand: 3e-4 * 10 / 37 at step 10.
    np.testing.assert_allclose(ours[3], 3e-4 * 10 / 37, rtol=1e-6)


def test_linear_warmup_reads_the_optimizer_step_and_serializes():
    schedule = schedules.warmup_schedule(1e-3, 8)
    assert isinstance(schedule, schedules.LinearWarmup)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule)
    optimizer.iterations.assign(2)
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(optimizer.learning_rate)), 2.5e-4
    )
    restored = keras.optimizers.AdamW.from_config(optimizer.get_config())
    restored.iterations.assign(6)
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(restored.learning_rate)), 7.5e-4
    )
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule)
    )
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(again(4))), 5e-4, rtol=1e-6
    )


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="a host read-back is a PyTorch eager matter",
)
def test_linear_warmup_reads_nothing_back_to_the_host():
    # A Python branch on a tensor (`if tensor:`) is a device sync on a GPU.
    # Make any such branch fail, and check that the old schedule trips it.
    import torch

    step = keras.Variable(5, dtype="int64", trainable=False)
    previous = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=1, alpha=1.0, warmup_target=1e-3, warmup_steps=10
    )
    with mock.patch.object(
        torch.Tensor, "__bool__", side_effect=AssertionError("host read")
    ):
        with pytest.raises(AssertionError, match="host read"):
            previous(step)
        value = schedules.LinearWarmup(1e-3, 10)(step)
    np.testing.assert_allclose(float(value), 5e-4, rtol=1e-6)


@pytest.mark.parametrize(
    "learning_rate, warmup_steps, message",
    [
        (-1e-3, 10, "learning_rate=-0.001"),
        ("1e-3", 10, "learning_rate='1e-3'"),
        (1e-3, 0, "warmup_steps=0"),
        (1e-3, 2.5, "warmup_steps=2.5"),
    ],
)
def test_linear_warmup_rejects_bad_arguments(
    learning_rate, warmup_steps, message
):
    with pytest.raises(ValueError, match=message):
        schedules.LinearWarmup(learning_rate, warmup_steps)
