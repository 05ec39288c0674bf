import numpy as np
import pytest

from keras_dsd.metrics import frechet

# No Keras call: run with one backend (conftest.py).
pytestmark = pytest.mark.backend_independent


def _random_covariance(rng, dim, rank=None):
    rank = dim if rank is None else rank
    factor = rng.normal(size=(dim, rank))
    return factor @ factor.T / rank


def _scipy_frechet_distance(mu1, sigma1, mu2, sigma2):
    """The pytorch-fid / TTUR reference formula, with scipy's sqrtm."""
    linalg = pytest.importorskip("scipy.linalg")
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    difference = mu1 - mu2
    return (
        difference @ difference
        + np.trace(sigma1)
        + np.trace(sigma2)
        - 2.0 * np.trace(covmean)
    )


def test_identical_gaussians_are_at_distance_zero():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(16,))
    sigma = _random_covariance(rng, 16)
    distance = frechet.frechet_distance(mu, sigma, mu, sigma)
    assert 0.0 <= distance < 1e-9


def test_identical_singular_gaussians_are_at_distance_zero():
    rng = np.random.default_rng(1)
    sigma = _random_covariance(rng, 16, rank=3)
    distance = frechet.frechet_distance(
        np.zeros(16), sigma, np.zeros(16), sigma
    )
    assert 0.0 <= distance < 1e-9


def test_commuting_diagonal_covariances():
    # For diagonal covariances, (S1 S2)^(1/2) = diag(sqrt(a_i b_i)), so
    # d^2 = ||mu1 - mu2||^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    a = np.array([1.0, 4.0, 0.25, 9.0, 0.0])
    b = np.array([4.0, 1.0, 0.25, 0.0, 2.0])
    mu1 = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    mu2 = np.array([1.0, 1.0, 0.0, 3.0, 5.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    # = 6 + (1 + 1 + 0 + 9 + 2) = 19
    assert expected == pytest.approx(19.0)
    actual = frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert actual == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_commuting_rotated_covariances():
    # The closed form also holds for S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T.
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a = rng.uniform(0.1, 3.0, size=6)
    b = rng.uniform(0.1, 3.0, size=6)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    actual = frechet.frechet_distance(
        np.zeros(6), q @ np.diag(a) @ q.T, np.zeros(6), q @ np.diag(b) @ q.T
    )
    assert actual == pytest.approx(expected, rel=1e-9)


def test_one_dimensional_gaussians():
    # W2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2.
    actual = frechet.frechet_distance(1.0, 4.0, -2.0, 9.0)
    assert actual == pytest.approx(9.0 + 1.0, rel=1e-12)
    actual = frechet.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]])
    assert actual == pytest.approx(10.0, rel=1e-12)


def test_symmetric_in_its_arguments():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=(2, 10))
    sigma1 = _random_covariance(rng, 10)
    sigma2 = _random_covariance(rng, 10, rank=4)
    forward = frechet.frechet_distance(mu1, sigma1, mu2, sigma2)
    backward = frechet.frechet_distance(mu2, sigma2, mu1, sigma1)
    assert forward == pytest.approx(backward, rel=1e-9)


def test_matches_scipy_sqrtm_reference():
    rng = np.random.default_rng(4)
    for dim in (3, 32):
        mu1, mu2 = rng.normal(size=(2, dim))
        sigma1 = _random_covariance(rng, dim)
        sigma2 = _random_covariance(rng, dim) + np.eye(dim)
        expected = _scipy_frechet_distance(mu1, sigma1, mu2, sigma2)
        actual = frechet.frechet_distance(mu1, sigma1, mu2, sigma2)
        assert actual == pytest.approx(expected, rel=1e-8)


def test_gaussian_samples_converge_to_the_closed_form():
    rng = np.random.default_rng(5)
    a = np.array([1.0, 4.0, 0.25])
    b = np.array([2.0, 1.0, 1.0])
    x = rng.normal(size=(200_000, 3)) * np.sqrt(a)
    y = rng.normal(size=(200_000, 3)) * np.sqrt(b) + 1.0
    expected = 3.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    actual = frechet.frechet_distance(
        *frechet.feature_statistics(x), *frechet.feature_statistics(y)
    )
    assert actual == pytest.approx(expected, rel=0.02)


def test_feature_statistics_against_numpy():
    rng = np.random.default_rng(6)
    features = rng.normal(size=(50, 4)).astype("float32")
    mu, sigma = frechet.feature_statistics(features)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, features.astype("float64").mean(0))
    np.testing.assert_allclose(
        sigma, np.cov(features.astype("float64").T, ddof=1)
    )


def test_feature_statistics_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples; got 1"):
        frechet.feature_statistics(np.ones((1, 4)))


def test_feature_statistics_warns_on_a_singular_covariance():
    features = np.random.default_rng(7).normal(size=(5, 8))
    with pytest.warns(RuntimeWarning, match="at least 9 samples"):
        frechet.feature_statistics(features)
    with pytest.raises(ValueError, match="at least 9 samples"):
        frechet.feature_statistics(features, on_singular="raise")
    frechet.feature_statistics(features, on_singular="ignore")


def test_feature_statistics_rejects_bad_input():
    with pytest.raises(ValueError, match="num_samples, feature_dim"):
        frechet.feature_statistics(np.ones((4, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        frechet.feature_statistics(np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="on_singular"):
        frechet.feature_statistics(np.ones((4, 2)), on_singular="maybe")


def test_frechet_distance_rejects_bad_input():
    eye = np.eye(3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        frechet.frechet_distance([0, 0, np.inf], eye, np.zeros(3), eye)
    with pytest.raises(ValueError, match=r"`sigma2` must have shape \(3, 3\)"):
        frechet.frechet_distance(np.zeros(3), eye, np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="same dimension"):
        frechet.frechet_distance(np.zeros(3), eye, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="not symmetric"):
        frechet.frechet_distance(
            np.zeros(3), np.triu(np.ones((3, 3))), np.zeros(3), eye
        )
    with pytest.raises(ValueError, match="`sigma2` is not positive semi"):
        frechet.frechet_distance(np.zeros(3), eye, np.zeros(3), -eye)
