import numpy as np
import pytest

from keras_dsd.metrics import linear_probe_accuracy
from keras_dsd.metrics import probe_accuracy
from keras_dsd.testing import test_utils


def _blobs(num, separation, seed):
    """Two Gaussian classes in 5-d whose means differ by `separation`
    along the first axis."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, num)
    features = rng.standard_normal((num, 5))
    features[:, 0] += separation * labels
    return features, labels


def test_separable_classes_are_all_found():
    # Means 20 standard deviations apart: a linear boundary halfway
    # separates every sample (a miss would need a 10-sigma draw).
    train = _blobs(400, 20.0, seed=0)
    test = _blobs(400, 20.0, seed=1)
    assert probe_accuracy(*train, *test) == 1.0


def test_overlapping_classes_reach_the_bayes_accuracy():
    # Means 1 apart, unit variance: the best boundary errs with probability
    # Phi(-1/2) = 0.3085, so the accuracy is about 0.69 (std 0.007 on 4,000
    # test points, plus a little for the fitted boundary).
    train = _blobs(4000, 1.0, seed=0)
    test = _blobs(4000, 1.0, seed=1)
    assert abs(probe_accuracy(*train, *test) - 0.6915) < 0.03


def test_xor_is_not_linearly_separable():
    # Four clusters at (+-1, +-1), class = sign(x * y): every line puts at
    # least one cluster on the wrong side, so the probe reaches at most
    # about 3/4, and a symmetric fit stays near 1/2.
    rng = np.random.default_rng(0)

    def xor(num):
        corners = rng.choice([-1.0, 1.0], (num, 2))
        labels = (corners[:, 0] * corners[:, 1] > 0).astype("int32")
        return corners + 0.1 * rng.standard_normal((num, 2)), labels

    accuracy = probe_accuracy(*xor(2000), *xor(2000))
    assert accuracy <= 0.76


def test_multiclass_and_features_of_any_rank():
    # Three classes told apart by which of three channels is bright,
    # given as (B, 2, 3) "latents".
    rng = np.random.default_rng(0)

    def split(num):
        labels = rng.integers(0, 3, num)
        features = rng.standard_normal((num, 2, 3))
        features[np.arange(num), :, labels] += 8.0
        return features, labels

    assert probe_accuracy(*split(300), *split(300)) == 1.0


def test_model_probe_runs_on_mean_pooled_latents():
    # Images whose class sets the brightness: a probe on the latents
    # (mean-pooled by the function) scores what `probe_accuracy` scores on
    # latents mean-pooled here.
    class Encoder:
        def encode(self, images, batch_size=64):
            x = images.astype("float32") / 255.0
            tokens = x.reshape(len(x), 4, -1)
            return np.stack([tokens.mean(-1), tokens.std(-1)], -1)

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200).astype("int32")
    images = (
        rng.integers(0, 100, (200, 8, 8, 3)) + 150 * labels[:, None, None, None]
    )
    images = images.astype("uint8")
    assert linear_probe_accuracy(Encoder(), images, labels) == 1.0
    # Flattened: the class is in one token's mean only (token 2 is bright
    # for class 1), which averaging over the 4 tokens still shows, and
    # keeping the tokens apart shows too.
    one_token = rng.integers(0, 100, (200, 8, 8, 3))
    one_token[:, 4:6] += 150 * labels[:, None, None, None]
    one_token = one_token.astype("uint8")
    for pooling in ("mean", "flatten"):
        accuracy = linear_probe_accuracy(
            Encoder(), one_token, labels, pooling=pooling
        )
        assert accuracy == 1.0, pooling
    # Random labels: chance (40 held-out images; 3 std = 0.24).
    shuffled = rng.permutation(labels)
    accuracy = linear_probe_accuracy(Encoder(), images, shuffled, seed=1)
    assert abs(accuracy - 0.5) < 0.25
    test_images, test_labels = images[:50], labels[:50]
    assert (
        linear_probe_accuracy(
            Encoder(),
            images[50:],
            labels[50:],
            test_images=test_images,
            test_labels=test_labels,
        )
        == 1.0
    )


def test_dsd_model_probe():
    # A DSD model's encoder (random fixed weights) on images whose class
    # is their brightness: mean-pooled latents still tell them apart.
    from keras_dsd.models.dsd.dsd_image_generator import DSDImageGenerator

    backbone = test_utils.randomize_weights(
        test_utils.tiny_backbone(), seed=1, stddev=0.2
    )
    model = DSDImageGenerator(backbone, compile=False)
    labels = np.arange(60, dtype="int32") % 2
    images = (
        test_utils.random_images(60) // 2 + 128 * labels[:, None, None, None]
    )
    assert linear_probe_accuracy(model, images.astype("uint8"), labels) == 1.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"train_labels": np.zeros(10, "int32")}, "at least two classes"),
        ({"train_labels": np.arange(9) % 2}, "has 9 entries for 10"),
        ({"train_labels": np.zeros(10) + 0.5}, "integer class ids"),
        ({"test_features": np.zeros((4, 3))}, "must have 2 features"),
        ({"train_features": np.full((10, 2), np.nan)}, "NaN or inf"),
        ({"l2": 0.0}, "l2=0.0"),
    ],
)
def test_bad_probe_input(kwargs, match):
    args = {
        "train_features": np.arange(20.0).reshape(10, 2),
        "train_labels": np.arange(10) % 2,
        "test_features": np.zeros((4, 2)),
        "test_labels": np.zeros(4, "int32"),
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        probe_accuracy(**args)


def test_bad_model_probe_input():
    images = test_utils.random_images(10)
    with pytest.raises(ValueError, match="`labels` has 3 entries for 10"):
        linear_probe_accuracy(None, images, np.zeros(3, "int32"))
    with pytest.raises(ValueError, match="go together"):
        linear_probe_accuracy(
            None, images, np.zeros(10, "int32"), test_images=images
        )
    with pytest.raises(ValueError, match="pooling='max'"):
        linear_probe_accuracy(
            None, images, np.zeros(10, "int32"), pooling="max"
        )
    with pytest.raises(ValueError, match="test_fraction"):
        linear_probe_accuracy(
            None, images, np.zeros(10, "int32"), test_fraction=1.0
        )
