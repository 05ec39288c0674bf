import keras
import numpy as np

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
