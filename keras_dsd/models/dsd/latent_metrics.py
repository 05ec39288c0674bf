"""Health metrics of a latent space, logged at every training step.

They live beside the model that logs them, so that imports run one way
(the models do not depend on the evaluation metrics); `keras_dsd.metrics`
re-exports them.
"""

from keras import ops


def _tokens(latents):
    """`(..., c)` latents -> `(M, c)` float32 token matrix."""
    latents = ops.cast(latents, "float32")
    return ops.reshape(latents, (-1, latents.shape[-1]))


def latent_std(latents):
    """Mean over channels of the per-channel std over all latent tokens."""
    return ops.mean(ops.std(_tokens(latents), axis=0))


def covariance_eigenvalues(latents):
    """Eigenvalues of the `c x c` covariance of the latent tokens."""
    tokens = _tokens(latents)
    centered = tokens - ops.mean(tokens, axis=0, keepdims=True)
    num = ops.cast(ops.shape(tokens)[0], "float32")
    covariance = ops.matmul(ops.transpose(centered), centered) / num
    return ops.maximum(ops.eigh(covariance)[0], 0.0)


def effective_rank(latents, epsilon=1e-12):
    """Effective rank of the latent tokens (Roy & Vetterli, 2007).

    `exp(H(p))` with `p` the covariance eigenvalues normalised to sum to 1
    and `H` the Shannon entropy. It is 1 when all variance lies in one
    direction and `c` when the `c` channels are isotropic. The latents of
    `DSDBackbone.encode` end in a per-token LayerNorm over their `c`
    channels, which removes each token's channel mean: every token is
    orthogonal to the all-ones direction, one covariance eigenvalue is
    always 0, and their effective rank is at most `c - 1` (the value is
    reported as it is, on that scale: 7 is the top for `c = 8`). A fast
    fall is the alarm for latent collapse.

    Args:
        latents: `(..., c)` tensor; all leading axes are treated as tokens.
        epsilon: float. Guards the logarithm and an all-zero spectrum.
    """
    eigenvalues = covariance_eigenvalues(latents)
    p = eigenvalues / (ops.sum(eigenvalues) + epsilon)
    entropy = -ops.sum(p * ops.log(p + epsilon))
    return ops.exp(entropy)
