import math

import numpy as np
import pytest

from keras_dsd.metrics import frechet
from keras_dsd.metrics import generative_metrics
from keras_dsd.testing import test_utils


class _FakeExtractor:
    """Per-channel means and standard deviations: 6 cheap features."""

    name = "Fake"

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        x = np.asarray(images, "float64") / 255.0
        return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], -1)


def _images(num_images, seed, low=0, high=256):
    rng = np.random.default_rng(seed)
    # Per-image brightness and contrast, so that the features vary a lot.
    base = rng.integers(low, high, (num_images, 1, 1, 3))
    noise = rng.integers(-20, 21, (num_images, 6, 6, 3))
    return np.clip(base + noise, 0, 255).astype("uint8")


# === Fréchet distances ===


def test_running_moments_match_numpy_with_a_large_mean():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4)) + 1e6
    moments = generative_metrics._RunningMoments()
    for chunk in np.array_split(features, 7):
        moments.update(chunk)
    mu, sigma = moments.statistics("real", "raise")
    np.testing.assert_allclose(mu, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features.T), rtol=1e-8, atol=1e-8)


def test_frechet_distance_accumulates_batches():
    real, generated = _images(40, seed=1), _images(30, seed=2, high=128)
    extractor = _FakeExtractor()
    metric = generative_metrics.FrechetDistance(extractor)
    assert metric.name == "FD-Fake"
    for real_chunk, generated_chunk in zip(
        np.array_split(real, 3), np.array_split(generated, 3)
    ):
        metric.update_state(real_chunk, generated_chunk)
    assert (metric.num_real, metric.num_generated) == (40, 30)
    expected = frechet.frechet_distance(
        *frechet.feature_statistics(extractor(real)),
        *frechet.feature_statistics(extractor(generated)),
    )
    assert expected > 0.01
    assert metric.result() == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    images = _images(20, seed=3)
    metric = generative_metrics.FrechetDistance(_FakeExtractor())
    metric.update_state(images, images)
    assert metric.result() == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_reset_state():
    extractor = _FakeExtractor()
    metric = generative_metrics.FrechetDistance(extractor, name="fd")
    real, generated = _images(20, seed=4), _images(20, seed=5)
    metric.update_state(real=real)
    metric.update_state(generated=_images(20, seed=6))
    metric.reset_state(keep_real=True)
    assert (metric.num_real, metric.num_generated) == (20, 0)
    metric.update_state(generated=generated)
    fresh = generative_metrics.FrechetDistance(extractor)
    fresh.update_state(real, generated)
    assert metric.result() == pytest.approx(fresh.result(), rel=1e-12)
    metric.reset_state()
    assert (metric.num_real, metric.num_generated) == (0, 0)
    with pytest.raises(ValueError, match="2 real images for a .*; got 0"):
        metric.result()


def test_frechet_distance_sample_count_policy():
    metric = generative_metrics.FrechetDistance(_FakeExtractor())
    metric.update_state(_images(4, seed=7), _images(4, seed=8))
    with pytest.warns(RuntimeWarning, match="at least 7 samples"):
        metric.result()
    strict = generative_metrics.FrechetDistance(
        _FakeExtractor(), on_singular="raise"
    )
    strict.update_state(_images(4, seed=7), _images(4, seed=8))
    with pytest.raises(ValueError, match="at least 7 samples"):
        strict.result()


def test_frechet_distance_input_checks():
    metric = generative_metrics.FrechetDistance(_FakeExtractor())
    images = _images(3, seed=9)
    with pytest.raises(ValueError, match="`real` must have rank 4"):
        metric.update_state(images[0], images)
    with pytest.raises(ValueError, match="`generated` must have 3 channels"):
        metric.update_state(images, images[..., :1])
    with pytest.raises(ValueError, match=r"`generated` must hold values in"):
        metric.update_state(images, images / 127.5 - 1.0)
    with pytest.raises(ValueError, match="or both"):
        metric.update_state()
    bad = generative_metrics.FrechetDistance(lambda x: np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"map 3 images to \(3, feature_dim"):
        bad.update_state(images)
    with pytest.raises(ValueError, match="callable"):
        generative_metrics.FrechetDistance("inception")


def test_fid_with_a_given_extractor():
    metric = generative_metrics.FrechetInceptionDistance(
        feature_extractor=_FakeExtractor()
    )
    assert metric.name == "fid"
    metric.update_state(_images(10, seed=10), _images(10, seed=11))
    assert metric.result() > 0.0


def test_fid_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        generative_metrics.FrechetInceptionDistance(
            weights_path=tmp_path / "inception.h5"
        )


# === Inception Score ===


def _classifier_from_logits(logits):
    """A fake classifier: image `i` holds the integer `i` in its pixels."""
    logits = np.asarray(logits, "float64")

    def classify(images):
        return logits[np.asarray(images)[:, 0, 0, 0].astype(int)]

    return classify


def _indexed_images(num_images):
    return np.broadcast_to(
        np.arange(num_images, dtype="uint8")[:, None, None, None],
        (num_images, 2, 2, 3),
    )


def _inception_score(logits):
    """exp(mean KL(p(y|x) || p(y))), written directly."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    marginal = p.mean(0, keepdims=True)
    return math.exp(np.mean(np.sum(p * np.log(p / marginal), axis=1)))


def test_inception_score_uniform_predictions_is_one():
    metric = generative_metrics.InceptionScore(
        _classifier_from_logits(np.zeros((12, 7))), num_splits=3
    )
    metric.update_state(_indexed_images(12))
    assert metric.result() == pytest.approx(1.0, abs=1e-12)


def test_inception_score_distinct_one_hot_is_num_classes():
    # Confident predictions spread evenly over 5 classes: IS = 5.
    logits = np.where(np.eye(5)[np.arange(20) % 5] > 0, 0.0, -np.inf)
    metric = generative_metrics.InceptionScore(
        _classifier_from_logits(logits), num_splits=1
    )
    for chunk in np.array_split(_indexed_images(20), 3):
        metric.update_state(chunk)
    assert metric.result() == pytest.approx(5.0, rel=1e-12)
    # With 4 splits each split still sees the 5 classes evenly.
    split = generative_metrics.InceptionScore(
        _classifier_from_logits(np.where(logits == 0, 50.0, 0.0)),
        num_splits=4,
    )
    split.update_state(_indexed_images(20))
    np.testing.assert_allclose(split.split_scores(), 5.0, rtol=1e-9)


def test_inception_score_matches_the_direct_formula():
    logits = np.random.default_rng(0).normal(size=(30, 6)) * 3.0
    metric = generative_metrics.InceptionScore(
        _classifier_from_logits(logits), num_splits=2
    )
    metric.update_state(_indexed_images(17))
    metric.update_state(_indexed_images(30)[17:])
    expected = [_inception_score(logits[0::2]), _inception_score(logits[1::2])]
    np.testing.assert_allclose(metric.split_scores(), expected, rtol=1e-10)
    assert metric.result() == pytest.approx(np.mean(expected), rel=1e-10)
    metric.reset_state()
    with pytest.raises(ValueError, match="at least 2 images; got 0"):
        metric.result()


def test_inception_score_checks_the_classifier_output():
    metric = generative_metrics.InceptionScore(
        lambda images: np.zeros((len(images),)), num_splits=1
    )
    with pytest.raises(ValueError, match="num_classes"):
        metric.update_state(_indexed_images(3))
    with pytest.raises(ValueError, match="num_splits"):
        generative_metrics.InceptionScore(lambda x: x, num_splits=0)


# === Precision and recall ===


def _brute_force_precision_recall(real, generated, k):
    def radii(points):
        distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
        return np.sort(distances, axis=1)[:, k]

    def coverage(points, centers, radius):
        distances = np.linalg.norm(points[:, None] - centers[None], axis=-1)
        return np.mean(np.any(distances <= radius[None], axis=1))

    return (
        coverage(generated, real, radii(real)),
        coverage(real, generated, radii(generated)),
    )


def test_precision_recall_identical_and_disjoint_sets():
    points = np.random.default_rng(0).normal(size=(50, 8))
    same = generative_metrics.precision_recall(points, points.copy())
    assert same == {"precision": 1.0, "recall": 1.0}
    far = generative_metrics.precision_recall(points, points + 1000.0)
    assert far == {"precision": 0.0, "recall": 0.0}


def test_precision_recall_constructed_case():
    # Real: 0, 1, ..., 9 on a line; 3rd-neighbour radii are 2 inside and 3
    # at the ends, so the real manifold is [-3, 12]. Two of the four
    # generated points fall in it: precision 1/2. The generated radius of
    # 0.5 is 199.5 (its 3rd neighbour is 200), which covers all the real
    # points: recall 1.
    real = np.arange(10.0)[:, None]
    generated = np.array([[0.5], [4.5], [100.0], [200.0]])
    result = generative_metrics.precision_recall(real, generated, k=3)
    assert result == {"precision": 0.5, "recall": 1.0}
    # k=1: radii 1 everywhere on the real line; generated radii are
    # 4, 4, 95.5 and 100, so 0.5's ball [-3.5, 4.5] holds real 0..4.
    result = generative_metrics.precision_recall(real, generated, k=1)
    assert result == {"precision": 0.5, "recall": 1.0}


def test_precision_recall_against_brute_force(monkeypatch):
    # Small row blocks exercise the blocked distance computation.
    monkeypatch.setattr(generative_metrics, "_BLOCK_ENTRIES", 50)
    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 3))
    generated = rng.normal(size=(30, 3)) * 1.5 + 0.5
    result = generative_metrics.precision_recall(real, generated, k=3)
    precision, recall = _brute_force_precision_recall(real, generated, 3)
    assert result["precision"] == pytest.approx(precision)
    assert result["recall"] == pytest.approx(recall)
    assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0


def test_precision_recall_input_checks():
    with pytest.raises(ValueError, match="at least 4"):
        generative_metrics.precision_recall(np.zeros((3, 2)), np.zeros((9, 2)))
    with pytest.raises(ValueError, match="different dimensions"):
        generative_metrics.precision_recall(np.zeros((9, 2)), np.zeros((9, 3)))


def test_precision_recall_metric():
    extractor = _FakeExtractor()
    metric = generative_metrics.PrecisionRecall(extractor, k=3)
    real = _images(12, seed=12)
    with pytest.raises(ValueError, match="both real and generated"):
        metric.result()
    metric.update_state(real[:6], real[:6])
    metric.update_state(real[6:], real[6:])
    assert metric.result() == {"precision": 1.0, "recall": 1.0}
    metric.reset_state(keep_real=True)
    metric.update_state(generated=_images(12, seed=13, low=250))
    expected = generative_metrics.precision_recall(
        extractor(real), extractor(_images(12, seed=13, low=250))
    )
    assert metric.result() == expected


# === PSNR ===


def test_psnr_known_values():
    real = test_utils.random_images(2, image_size=4).clip(2, 253)
    off_by_one = real.astype("int32") + np.where(real % 2 == 0, 1, -1)
    assert generative_metrics.psnr(real, off_by_one.astype("uint8")) == (
        pytest.approx(20.0 * math.log10(255.0))
    )
    black, white = np.zeros((1, 4, 4, 3), "uint8"), np.full((1, 4, 4, 3), 255)
    assert generative_metrics.psnr(black, white) == pytest.approx(0.0)
    # The mean of per-image values: errors of 1 and 2 levels.
    twice = np.concatenate([real[:1] + 0.0, real[1:] + 0.0])
    shifted = twice.copy()
    shifted[0] += 1.0
    shifted[1] -= 2.0
    expected = (20 * math.log10(255.0) + 20 * math.log10(255.0 / 2)) / 2
    assert generative_metrics.psnr(twice, shifted) == pytest.approx(expected)
    assert generative_metrics.psnr(real, real) == math.inf


def test_psnr_input_checks():
    real = test_utils.random_images(2, image_size=4)
    with pytest.raises(ValueError, match="same shape"):
        generative_metrics.psnr(real, real[:1])
    with pytest.raises(ValueError, match="`reconstructed` must hold values"):
        generative_metrics.psnr(real, real / 127.5 - 1.0)
