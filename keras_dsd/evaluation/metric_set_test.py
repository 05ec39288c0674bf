import numpy as np
import pytest

from keras_dsd.evaluation import metric_set
from keras_dsd.evaluation import reference


class FakeExtractor:
    """Features: the per-channel mean pixel (3-d); logits: zeros (a
    uniform classifier). Logs the number of images of each pass."""

    def __init__(self, name="EffNetLite0", batch_size=4):
        self.name = name
        self.batch_size = batch_size
        self.calls = []

    def predict(self, images):
        self.calls.append(len(images))
        images = np.asarray(images, "float32")
        return {
            "features": images.mean(axis=(1, 2)),
            "logits": np.zeros((len(images), 5), "float32"),
        }


def flat_images(colours, size=2):
    """uint8 images of one colour each, `colours` `(N, 3)`."""
    colours = np.asarray(colours, "uint8")
    return np.broadcast_to(
        colours[:, None, None, :], (len(colours), size, size, 3)
    ).copy()


def reference_colours():
    return np.random.default_rng(0).integers(20, 200, (8, 3))


def test_frechet_distance_of_a_shift_and_one_pass_per_batch():
    extractor = FakeExtractor()
    metrics = ["fd-effnet", "precision-recall"]
    metric_set_ = metric_set.MetricSet(
        metrics, {"EffNetLite0": metric_set.SharedPredictor(extractor)}
    )
    real = flat_images(reference_colours())
    metric_set_.update_reference(real[:6])
    metric_set_.update_reference(real[6:])
    # Two metrics, one extractor pass per batch, padded to batch_size 4.
    assert extractor.calls == [8, 4]
    results = metric_set_.score([real[:6], real[6:]])
    # Same features: distance 0, every sample inside the other manifold.
    assert results["FD-EffNetLite0"] == pytest.approx(0.0, abs=1e-6)
    assert results["precision"] == 1.0 and results["recall"] == 1.0

    shifted = metric_set.MetricSet(
        ["fd-effnet"],
        {"EffNetLite0": metric_set.SharedPredictor(FakeExtractor())},
    )
    shifted.update_reference(real)
    # Same covariance, means 10 apart on each of 3 channels: d^2 = 3 * 100.
    results = shifted.score([flat_images(reference_colours() + 10)])
    assert results == {"FD-EffNetLite0": pytest.approx(300.0, rel=1e-6)}
    assert "NOT comparable with FID" in shifted.notes()["FD-EffNetLite0"]


def test_reference_statistics_replace_the_reference_images(tmp_path):
    real_path = str(tmp_path / "real.npz")
    np.savez(real_path, arr_0=flat_images(reference_colours()))
    stats_path = str(tmp_path / "stats.npz")

    def new_set():
        extractor = metric_set.SharedPredictor(FakeExtractor())
        return metric_set.MetricSet(["fd-effnet"], {"EffNetLite0": extractor})

    first = new_set()
    info = reference.inspect_reference(real_path)
    assert (
        reference.score_reference(
            first,
            real_path,
            info,
            batch_size=3,
            stats_path=stats_path,
            verbose=False,
        )
        == 8
    )
    mu, _ = reference.read_reference_stats(stats_path, "EffNetLite0")
    np.testing.assert_allclose(mu, reference_colours().mean(axis=0))

    second = new_set()
    info = reference.inspect_reference(stats_path, ["fd-effnet"])
    assert reference.score_reference(second, stats_path, info) is None
    results = second.score([flat_images(reference_colours() + 10)])
    assert results["FD-EffNetLite0"] == pytest.approx(300.0, rel=1e-6)


def test_inception_score_of_a_uniform_classifier_is_one():
    inception = metric_set.SharedPredictor(
        FakeExtractor("InceptionV3"), random_weights=True
    )
    metrics = metric_set.MetricSet(
        ["is"], {"InceptionV3": inception}, is_splits=2
    )
    assert not metrics.needs_reference_images
    results = metrics.score([flat_images(reference_colours())])
    assert results["IS"] == pytest.approx(1.0) and results["IS_std"] == 0.0
    assert "means nothing" in metrics.notes()["IS"]


@pytest.mark.backend_independent
def test_unavailable_extractors_and_bad_names():
    metrics = metric_set.MetricSet(
        ["fd-effnet", "precision-recall"], {"EffNetLite0": "no weights file"}
    )
    assert metrics.skipped == {
        "FD-EffNetLite0": "no weights file",
        "precision_recall": "no weights file",
    }
    assert metrics.results() == {}
    assert metrics.notes()["FD-EffNetLite0"] == "skipped: no weights file"
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['kid'\]"):
        metric_set.MetricSet(["fd-effnet", "kid"], {})
    with pytest.raises(ValueError, match="no 'InceptionV3', which FID needs"):
        metric_set.MetricSet(["fid"], {})
    with pytest.raises(ValueError, match="pass `inception_weights`"):
        metric_set.build_extractors(["is"])
    assert metric_set.extractors_needed(
        ["fid", "fd-effnet", "precision-recall", "is"], "effnet"
    ) == ["InceptionV3", "EffNetLite0"]
    assert metric_set.extractors_needed(["precision-recall"], "inception") == [
        "InceptionV3"
    ]
    assert metric_set.check_metric_names(["FID", " fid", "is"]) == ["fid", "is"]
