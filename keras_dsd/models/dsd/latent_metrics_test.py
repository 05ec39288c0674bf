import numpy as np

from keras_dsd.models.dsd import latent_metrics
from keras_dsd.testing import test_utils


def _effective_rank(x):
    return float(test_utils.to_numpy(latent_metrics.effective_rank(x)))


def _entropy_rank(eigenvalues):
    """exp(Shannon entropy of the normalised spectrum), in float64 numpy."""
    p = np.asarray(eigenvalues, "float64")
    p = p[p > 0] / p.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def _data_with_spectrum(eigenvalues, num_samples=512, seed=0):
    """Samples whose (biased) covariance has exactly `eigenvalues`."""
    rng = np.random.default_rng(seed)
    c = len(eigenvalues)
    # Centered orthonormal columns: U^T U = I and 1^T U = 0.
    raw = rng.normal(size=(num_samples, c))
    u, _ = np.linalg.qr(raw - raw.mean(0))
    rotation, _ = np.linalg.qr(rng.normal(size=(c, c)))
    scale = np.sqrt(num_samples * np.asarray(eigenvalues, "float64"))
    return (u * scale) @ rotation.T


def test_rank_one_data():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=(8,))
    x = rng.normal(size=(1000, 1)) * direction[None] + 3.0
    np.testing.assert_allclose(
        _effective_rank(x.astype("float32")), 1.0, atol=1e-3
    )


def test_isotropic_gaussian_is_full_rank():
    # With 20000 samples the sample spectrum of N(0, I_8) is within a few
    # percent of flat, which costs far less than 0.05 of effective rank.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 8)).astype("float32")
    rank = _effective_rank(x)
    assert 7.95 < rank <= 8.0 + 1e-4


def test_known_spectrum():
    eigenvalues = [4.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    x = _data_with_spectrum(eigenvalues)
    covariance = np.cov(x.T, bias=True)
    np.testing.assert_allclose(
        np.linalg.eigvalsh(covariance), sorted(eigenvalues), atol=1e-9
    )
    expected = _entropy_rank(eigenvalues)  # exp(H([2/3, 1/6, 1/6])) ~ 2.38
    np.testing.assert_allclose(expected, 2.3811, atol=1e-4)
    np.testing.assert_allclose(
        _effective_rank(x.astype("float32")), expected, rtol=1e-3
    )


def test_leading_axes_are_tokens():
    x = _data_with_spectrum([2.0, 1.0, 0.5, 0.5], num_samples=60)
    x = x.astype("float32")
    np.testing.assert_allclose(
        _effective_rank(x.reshape(3, 20, 4)), _effective_rank(x), rtol=1e-5
    )


def test_covariance_eigenvalues_against_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 7, 3)) @ rng.normal(size=(3, 3))
    actual = test_utils.to_numpy(
        latent_metrics.covariance_eigenvalues(x.astype("float32"))
    )
    expected = np.linalg.eigvalsh(np.cov(x.reshape(-1, 3).T, bias=True))
    np.testing.assert_allclose(np.sort(actual), expected, rtol=1e-4, atol=1e-5)


def test_constant_latents_give_a_finite_rank():
    rank = _effective_rank(np.ones((10, 4), "float32"))
    assert np.isfinite(rank) and rank <= 4.0


def test_latent_std_against_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 5, 3)) * np.array([0.5, 1.0, 2.0]) + 1.0
    expected = np.std(x.reshape(-1, 3), axis=0).mean()
    actual = float(
        test_utils.to_numpy(latent_metrics.latent_std(x.astype("float32")))
    )
    np.testing.assert_allclose(actual, expected, rtol=1e-5)


def test_backbone_latents_have_rank_at_most_c_minus_1():
    # The encoder's per-token LayerNorm removes each token's channel mean,
    # so the all-ones direction holds no variance. A random-weight backbone
    # with c = 4 channels spreads its 64 x 4 = 256 tokens over the other 3
    # directions: its rank is at most 3 (and well above 2).
    backbone = test_utils.randomize_weights(
        test_utils.tiny_backbone(), seed=0, stddev=0.5
    )
    images = test_utils.random_images(64)
    latents = test_utils.to_numpy(
        backbone.encode(images.astype("float32") / 127.5 - 1.0)
    )
    tokens = latents.reshape(-1, 4).astype("float64")
    np.testing.assert_allclose(tokens.mean(axis=1), 0.0, atol=1e-5)
    eigenvalues = np.linalg.eigvalsh(np.cov(tokens.T, bias=True))
    assert eigenvalues[0] < 1e-6 * eigenvalues[-1]
    ones = np.ones(4) / 2.0
    assert ones @ np.cov(tokens.T, bias=True) @ ones < 1e-6
    rank = _effective_rank(latents)
    np.testing.assert_allclose(rank, _entropy_rank(eigenvalues[1:]), rtol=1e-3)
    assert 2.0 < rank <= 3.0 + 1e-3
