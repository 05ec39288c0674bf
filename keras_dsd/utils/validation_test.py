import numpy as np
import pytest

from keras_dsd.utils import validation


def test_check_images_of_any_size_names_the_argument():
    good = np.zeros((2, 5, 7, 3), "uint8")
    assert validation.check_images(good).shape == (2, 5, 7, 3)
    with pytest.raises(ValueError, match=r"`real` must have rank 4.*\[None\]"):
        validation.check_images(good[0], name="real")
    with pytest.raises(ValueError, match="`real` must have 3 channels"):
        validation.check_images(good[..., :1], name="real")
    with pytest.raises(ValueError, match=r"\[0, 255\].*\[-1, 1\]"):
        validation.check_images(good - 1.0, name="generated")
    with pytest.raises(ValueError, match="`generated` contains NaN"):
        validation.check_images(good + np.nan, name="generated")
    with pytest.raises(ValueError, match="`generated` is empty"):
        validation.check_images(good[:0], name="generated")
    with pytest.raises(ValueError, match="`generated` must be uint8"):
        validation.check_images(good.astype(bool), name="generated")


def test_check_images_of_a_fixed_size_says_what_takes_it():
    good = np.full((1, 8, 8, 3), 255.0, "float32")
    np.testing.assert_array_equal(validation.check_images(good, 8, 4), good)
    with pytest.raises(ValueError, match=r"12x12; this model takes 8x8"):
        validation.check_images(np.zeros((1, 12, 12, 3), "uint8"), 8, 4)
    with pytest.raises(ValueError, match=r"10x10, which patch_size=4 does not"):
        validation.check_images(np.zeros((1, 10, 10, 3), "uint8"), 8, 4)
    with pytest.raises(ValueError, match=r"`x` has size 9x9; the classifier"):
        validation.check_images(
            np.zeros((1, 9, 9, 3)), 8, name="x", taker="the classifier"
        )
    # A fixed size accepts an empty batch: callers that need one image
    # check that themselves (`check_not_empty`).
    assert validation.check_images(np.zeros((0, 8, 8, 3)), 8).shape[0] == 0
