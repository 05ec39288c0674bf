import numpy as np
import pytest

from keras_dsd.datasets import load_mnist_digits
from keras_dsd.metrics import digit_classifier


@pytest.fixture(scope="module")
def split():
    images, labels = load_mnist_digits(image_size=32)
    # The file is ordered by class: interleave so both halves hold all ten.
    train = np.arange(len(images)) % 5 != 0
    return (images[train][::4], labels[train][::4]), (
        images[~train][::2],
        labels[~train][::2],
    )


def test_outputs_and_shapes():
    classifier, extractor = digit_classifier.build_digit_classifier(32)
    images = np.zeros((3, 32, 32, 3), "uint8")
    assert classifier.predict(images, verbose=0).shape == (3, 10)
    features, predicted = digit_classifier.classify_digits(extractor, images)
    assert features.shape == (3, 64) and features.dtype == np.float64
    assert predicted.shape == (3,)
    assert set(predicted) <= set(range(10))


# Training takes 5-8 s on TensorFlow and JAX, 3 s on PyTorch.
@pytest.mark.large(except_backend="torch")
def test_trained_classifier_recognises_held_out_digits(split):
    (train_x, train_y), (test_x, test_y) = split
    extractor = digit_classifier.train_digit_classifier(
        train_x, train_y, epochs=3, seed=0
    )
    _, predicted = digit_classifier.classify_digits(extractor, test_x)
    # 1,000 training digits, 500 unseen ones: a CNN gets far above the 10 %
    # of chance. Labels shifted by one are then almost never "right", which
    # shows that the accuracy measures class identity.
    assert np.mean(predicted == test_y) > 0.8
    assert np.mean(predicted == (test_y + 1) % 10) < 0.1


def test_bad_input_is_named():
    _, extractor = digit_classifier.build_digit_classifier(32)
    with pytest.raises(ValueError, match="`images` has size 28x28"):
        digit_classifier.classify_digits(
            extractor, np.zeros((1, 28, 28, 3), "uint8")
        )
    with pytest.raises(ValueError, match="3 channels"):
        digit_classifier.classify_digits(
            extractor, np.zeros((1, 32, 32, 1), "uint8")
        )
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        digit_classifier.train_digit_classifier(
            np.zeros((2, 32, 32, 3), "uint8"), [0, 10]
        )
