"""The Fréchet distance between two Gaussians, in float64 numpy.

`d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))`

The trace of the matrix square root is computed without forming
`(S1 S2)^(1/2)`, which is not symmetric and makes a general `sqrtm` slow and
fragile (complex parts, failures on singular covariances). Instead: with
`R = S1^(1/2)` from an eigendecomposition of the symmetric `S1`, the
symmetric positive semi-definite `R S2 R` has the same eigenvalues as
`S1 S2`, so `Tr((S1 S2)^(1/2)) = sum(sqrt(eigvalsh(R S2 R)))`. Only
symmetric eigensolvers are used, and roundoff negatives are clamped to 0.
"""

import warnings

import numpy as np

# Eigenvalues below `-_PSD_TOLERANCE * largest` mean the input was not a
# covariance matrix; anything above that is roundoff and is clamped to 0.
_PSD_TOLERANCE = 1e-6


def _as_float64(value, name):
    try:
        array = np.asarray(value, dtype="float64")
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"`{name}` must be an array of numbers; got "
            f"{type(value).__name__}: {error}"
        ) from None
    if array.size and not np.all(np.isfinite(array)):
        raise ValueError(
            f"`{name}` contains NaN or infinite values. Features with NaN "
            "usually come from NaN images or a diverged feature extractor."
        )
    return array


def _check_gaussian(mu, sigma, index):
    mu = _as_float64(mu, f"mu{index}")
    sigma = _as_float64(sigma, f"sigma{index}")
    mu = np.atleast_1d(mu)
    if mu.ndim != 1:
        raise ValueError(
            f"`mu{index}` must be a vector of shape (d,); got shape {mu.shape}."
        )
    d = mu.shape[0]
    sigma = np.atleast_2d(sigma)
    if sigma.shape != (d, d):
        raise ValueError(
            f"`sigma{index}` must have shape ({d}, {d}) to match "
            f"`mu{index}` of shape ({d},); got shape {sigma.shape}."
        )
    scale = max(float(np.max(np.abs(sigma))), 1.0) if d else 1.0
    if not np.allclose(sigma, sigma.T, rtol=1e-5, atol=1e-8 * scale):
        raise ValueError(
            f"`sigma{index}` is not symmetric, so it is not a covariance "
            "matrix."
        )
    return mu, (sigma + sigma.T) / 2.0


def _check_psd(eigenvalues, name):
    """Raises unless ascending `eigenvalues` are >= 0 up to roundoff."""
    if not eigenvalues.size:
        return
    largest = float(np.max(np.abs(eigenvalues)))
    if eigenvalues[0] < -_PSD_TOLERANCE * largest:
        raise ValueError(
            f"`{name}` is not positive semi-definite (smallest eigenvalue "
            f"{eigenvalues[0]:.3g}, largest {largest:.3g}), so it is not a "
            "covariance matrix."
        )


def _clamp_roundoff(eigenvalues):
    """Sets eigenvalues within roundoff of 0 (or below) to exactly 0.

    The square root amplifies roundoff near 0 (`sqrt(1e-16) = 1e-8`), so a
    singular covariance would otherwise add noise of order `1e-8` per zero
    eigenvalue to the trace.
    """
    if not eigenvalues.size:
        return eigenvalues
    cutoff = eigenvalues.size * np.finfo("float64").eps
    cutoff *= float(np.max(np.abs(eigenvalues)))
    return np.where(eigenvalues > cutoff, eigenvalues, 0.0)


def trace_sqrt_product(sigma1, sigma2):
    """`Tr((sigma1 @ sigma2)^(1/2))` for symmetric PSD matrices, in float64."""
    eigenvalues, eigenvectors = np.linalg.eigh(sigma1)
    _check_psd(eigenvalues, "sigma1")
    # Checked on its own: a singular sigma1 would hide part of sigma2.
    _check_psd(np.linalg.eigvalsh(sigma2), "sigma2")
    roots = np.sqrt(_clamp_roundoff(eigenvalues))
    root1 = (eigenvectors * roots) @ eigenvectors.T
    middle = root1 @ sigma2 @ root1
    middle = (middle + middle.T) / 2.0
    # PSD by construction: negatives here are roundoff only.
    eigenvalues = _clamp_roundoff(np.linalg.eigvalsh(middle))
    return float(np.sum(np.sqrt(eigenvalues)))


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet (2-Wasserstein) distance between two Gaussians, squared.

    `||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2))`,
    the quantity FID reports (Heusel et al., 2017) on Inception features.
    Computed in float64 with symmetric eigendecompositions only (see the
    module docstring), so singular covariances, e.g. from fewer samples
    than feature dimensions, are handled without complex numbers.

    Args:
        mu1: `(d,)` mean of the first Gaussian.
        sigma1: `(d, d)` covariance of the first Gaussian.
        mu2: `(d,)` mean of the second Gaussian.
        sigma2: `(d, d)` covariance of the second Gaussian.

    Returns:
        A Python float `>= 0`.

    Example:

    ```python
    import numpy as np
    from keras_dsd.metrics.frechet import feature_statistics
    from keras_dsd.metrics.frechet import frechet_distance

    rng = np.random.default_rng(0)
    a = feature_statistics(rng.normal(size=(1000, 8)))
    b = feature_statistics(rng.normal(size=(1000, 8)) + 1.0)
    frechet_distance(*a, *b)  # about 8 = ||1||^2 over 8 dimensions
    ```

    References:
        - [Heusel et al., 2017](https://arxiv.org/abs/1706.08500)
        - [Dowson & Landau, 1982](https://doi.org/10.1016/0047-259X(82)90077-X)
    """
    mu1, sigma1 = _check_gaussian(mu1, sigma1, 1)
    mu2, sigma2 = _check_gaussian(mu2, sigma2, 2)
    if mu1.shape != mu2.shape:
        raise ValueError(
            "The two Gaussians must have the same dimension; got "
            f"mu1 of shape {mu1.shape} and mu2 of shape {mu2.shape}."
        )
    difference = mu1 - mu2
    distance = (
        float(difference @ difference)
        + float(np.trace(sigma1))
        + float(np.trace(sigma2))
        - 2.0 * trace_sqrt_product(sigma1, sigma2)
    )
    if not np.isfinite(distance):
        raise ValueError(
            f"The Fréchet distance is not finite ({distance}); the inputs "
            "overflow float64."
        )
    # Equal Gaussians give 0 up to roundoff, which can be a tiny negative.
    return max(distance, 0.0)


def feature_statistics(features, on_singular="warn"):
    """Mean and unbiased covariance of a `(num_samples, d)` feature matrix.

    Args:
        features: `(num_samples, d)` array of features, one row per sample.
        on_singular: string. What to do when `num_samples <= d`, where the
            covariance has rank at most `num_samples - 1 < d` and the
            Fréchet distance is strongly biased: `"warn"`, `"raise"` or
            `"ignore"`. Defaults to `"warn"`.

    Returns:
        `(mu, sigma)`: float64 arrays of shape `(d,)` and `(d, d)`.
    """
    if on_singular not in ("warn", "raise", "ignore"):
        raise ValueError(
            "`on_singular` must be 'warn', 'raise' or 'ignore'; got "
            f"on_singular={on_singular!r}."
        )
    features = _as_float64(features, "features")
    if features.ndim != 2:
        raise ValueError(
            "`features` must have shape (num_samples, feature_dim); got "
            f"shape {features.shape}."
        )
    num_samples, dim = features.shape
    if num_samples < 2:
        raise ValueError(
            f"A covariance needs at least 2 samples; got {num_samples}."
        )
    check_sample_count(num_samples, dim, on_singular)
    mu = features.mean(axis=0)
    sigma = np.cov(features, rowvar=False).reshape(dim, dim)
    return mu, sigma


def check_sample_count(num_samples, dim, on_singular="warn"):
    """Warns (or raises) when `num_samples` cannot give a full-rank covariance.

    Shared by `feature_statistics` and the running-moment accumulators of
    `keras_dsd.metrics.generative_metrics`.
    """
    if num_samples > dim or on_singular == "ignore":
        return
    message = (
        f"{num_samples} samples of {dim}-dimensional features give a "
        f"singular covariance (rank at most {num_samples - 1}); at least "
        f"{dim + 1} samples are needed for a full-rank covariance, and "
        "far more for an unbiased Fréchet distance (FID is reported on "
        "50,000 samples)."
    )
    if on_singular == "raise":
        raise ValueError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
