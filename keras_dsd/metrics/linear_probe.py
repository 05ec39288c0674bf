"""Linear probes: how linearly separable the classes are in a feature space.

A multinomial logistic regression is fitted on the features of a training
split and scored on held-out features. `linear_probe_accuracy` does it on a
DSD model's latents, mean-pooled over tokens (or all tokens side by side);
`probe_accuracy` on any
features (e.g. flattened pixels, the usual floor). Needs scikit-learn
(`pip install scikit-learn`, part of the dev extras).
"""

import numpy as np

from keras_dsd.utils import validation

POOLINGS = ("mean", "flatten")


def probe_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    l2=1.0,
    max_iter=1000,
):
    """Held-out accuracy of a logistic-regression probe.

    The features are standardised with the training split's mean and std,
    then scikit-learn's `LogisticRegression` (L-BFGS, multinomial, L2
    penalty with inverse strength `1 / l2`) is fitted on the training
    split and scored on the test split.

    Args:
        train_features: float array `(B, ...)`, flattened to `(B, D)`.
        train_labels: int array `(B,)`, at least two classes.
        test_features: float array `(B', ...)` with the same `D`.
        test_labels: int array `(B',)`.
        l2: float > 0. L2 penalty strength. Defaults to `1.0`.
        max_iter: int. L-BFGS iterations. Defaults to `1000`.

    Returns:
        float: the fraction of `test_labels` predicted correctly.
    """
    from sklearn.linear_model import LogisticRegression

    train_x, train_y = _check_split(train_features, train_labels, "train")
    test_x, test_y = _check_split(test_features, test_labels, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"`test_features` must have {train_x.shape[1]} features per "
            f"example, like `train_features`; got {test_x.shape[1]}."
        )
    if len(np.unique(train_y)) < 2:
        raise ValueError(
            f"`train_labels` must hold at least two classes; got "
            f"{np.unique(train_y).tolist()}."
        )
    if not (np.isfinite(l2) and l2 > 0):
        raise ValueError(f"`l2` must be a finite float > 0, got l2={l2!r}.")
    max_iter = validation.check_positive_int(max_iter, "max_iter")
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    probe = LogisticRegression(C=1.0 / l2, max_iter=max_iter)
    probe.fit((train_x - mean) / std, train_y)
    predicted = probe.predict((test_x - mean) / std)
    return float(np.mean(predicted == test_y))


def linear_probe_accuracy(
    model,
    images,
    labels,
    test_images=None,
    test_labels=None,
    test_fraction=0.2,
    seed=0,
    l2=1.0,
    batch_size=64,
    pooling="mean",
):
    """Linear-probe accuracy of a DSD model's latents.

    Encodes the images with `model.encode` (the sampling-EMA weights),
    averages each latent over its tokens (`(B, N, c)` -> `(B, c)`; with
    `pooling="flatten"`, keeps every token: `(B, N * c)`) and returns
    `probe_accuracy` of those features.

    Args:
        model: `keras_dsd.models.DSDImageGenerator` (anything with
            `encode(images, batch_size=...)`).
        images: uint8-scale images `(B, H, W, 3)` of the model's size.
        labels: int array `(B,)`.
        test_images: `None`, or held-out images. `None` holds out a random
            `test_fraction` of `images` (drawn with numpy from `seed`).
        test_labels: int array, with `test_images`.
        test_fraction: float in `(0, 1)`. Defaults to `0.2`.
        seed: int. The split's seed. Defaults to `0`.
        l2: float. See `probe_accuracy`. Defaults to `1.0`.
        batch_size: int. Images per `encode` call. Defaults to `64`.
        pooling: string. `"mean"` (over tokens) or `"flatten"`. Defaults
            to `"mean"`.

    Returns:
        float: held-out accuracy.

    Example:
    ```python
    images, labels = keras_dsd.datasets.load_mnist_digits()
    accuracy = keras_dsd.metrics.linear_probe_accuracy(model, images, labels)
    ```
    """
    validation.check_choice(pooling, POOLINGS, "pooling")
    images = validation.check_images(images)
    labels = _check_labels(labels, len(images), "labels")
    if (test_images is None) != (test_labels is None):
        raise ValueError(
            "`test_images` and `test_labels` go together; got only one of them."
        )
    if test_images is None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(
                f"`test_fraction` must be in (0, 1), got "
                f"test_fraction={test_fraction!r}."
            )
        order = np.random.default_rng(seed).permutation(len(images))
        num_test = int(round(test_fraction * len(images)))
        if not 0 < num_test < len(images):
            raise ValueError(
                f"`test_fraction={test_fraction}` of {len(images)} images "
                "leaves an empty split."
            )
        test, train = order[:num_test], order[num_test:]
        test_images, test_labels = images[test], labels[test]
        images, labels = images[train], labels[train]
    else:
        test_images = validation.check_images(test_images, name="test_images")
        test_labels = _check_labels(
            test_labels, len(test_images), "test_labels"
        )

    def pooled(x):
        latents = np.asarray(model.encode(x, batch_size=batch_size))
        if pooling == "mean":
            return latents.mean(axis=1)
        return latents.reshape(len(latents), -1)

    return probe_accuracy(
        pooled(images), labels, pooled(test_images), test_labels, l2=l2
    )


def _check_labels(labels, count, name):
    labels = validation.to_numpy(labels, name)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"`{name}` must be a 1-D array of integer class ids; got shape "
            f"{labels.shape} and dtype {labels.dtype}."
        )
    if len(labels) != count:
        raise ValueError(
            f"`{name}` has {len(labels)} entries for {count} examples."
        )
    return labels


def _check_split(features, labels, split):
    features = validation.to_numpy(features, f"{split}_features")
    if features.ndim < 2 or len(features) == 0:
        raise ValueError(
            f"`{split}_features` must be a non-empty array (B, ...); got "
            f"shape {features.shape}."
        )
    features = features.reshape(len(features), -1).astype("float64")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"`{split}_features` contains NaN or inf.")
    labels = _check_labels(labels, len(features), f"{split}_labels")
    return features, labels
