import keras
import numpy as np
import pytest

from keras_dsd.models.dsd import ema


@pytest.mark.parametrize(
    "decay, step, expected",
    # min(m, (1 + k) / (10 + k)), by hand.
    [(0.999, 0, 0.1), (0.999, 8, 0.5), (0.999, 10_000, 0.999), (0.3, 5, 0.3)],
)
def test_warmup_decay(decay, step, expected):
    value = keras.ops.convert_to_numpy(ema.warmup_decay(decay, step))
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_update_averages_moves_each_average_and_counts():
    source = keras.layers.Dense(2)
    fast, slow = keras.layers.Dense(2), keras.layers.Dense(2)
    for layer in (source, fast, slow):
        layer.build((None, 3))
    ones = [np.ones_like(w) for w in source.get_weights()]
    source.set_weights(ones)
    fast.set_weights([0 * w for w in ones])
    slow.set_weights([0 * w for w in ones])
    step = keras.Variable(8, dtype="int32", trainable=False)
    pairs = [(fast, 0.2), (slow, 0.999)]

    ema.update_averages(pairs, source, step, applied=keras.ops.array(True))
    # k = 8: fast decays by min(0.2, 0.5) = 0.2 -> 0.8; slow by 0.5 -> 0.5.
    np.testing.assert_allclose(fast.get_weights()[0], 0.8, rtol=1e-6)
    np.testing.assert_allclose(slow.get_weights()[0], 0.5, rtol=1e-6)
    assert int(keras.ops.convert_to_numpy(step)) == 9

    ema.update_averages(pairs, source, step, applied=keras.ops.array(False))
    np.testing.assert_allclose(slow.get_weights()[0], 0.5, rtol=1e-6)
    assert int(keras.ops.convert_to_numpy(step)) == 9

    ema.update_averages(
        pairs, source, step, applied=keras.ops.array(True), warmup=False
    )
    # Without the warm-up: slow 0.999 * 0.5 + 0.001 * 1.
    np.testing.assert_allclose(slow.get_weights()[0], 0.5005, rtol=1e-6)


def test_check_decay_names_the_argument():
    with pytest.raises(ValueError, match=r"`teacher_decay` must be in \[0, 1"):
        ema.check_decay(1.0, "teacher_decay")
