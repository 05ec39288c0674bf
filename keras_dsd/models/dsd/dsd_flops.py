"""Analytic FLOPs per image of the DSD network, counted from its matmuls.

One multiply-add is two FLOPs, and only matrix products are counted (every
`Dense`, the attention scores `Q K^T` and the attention-weighted values):
the elementwise work (normalisations, activations, softmax, residuals) is a
few percent of a transformer's FLOPs at the preset sizes and is left out,
as in the usual "model FLOPs utilisation" accounting (PaLM, appendix B).

Per image, with `N` tokens, width `D`, MLP width `H`, `L` blocks:

| part | FLOPs (forward) |
|---|---|
| one block | `N (8 D^2 + 4 D H) + 4 N^2 D + 12 D^2` |
| encode | `2 N p^2 3 D` (patches) `+ L blocks + 4 D^2 + 2 N D c` (head) |
| decode | `2 N c D + L blocks + 4 D^2 + 2 N D p^2 3` |
| denoise | `2 N c D + 2 F D + 2 D^2` (time) `+ L blocks + 4 D^2 + 2 N D c` |

(`12 D^2` per block and `4 D^2` per head are the adaLN modulations, computed
once per image; `F` is the timestep embedding's sinusoid width, 256.)

A training step runs the online encode, decode and denoise forward and
backward, and the teacher's encode forward only. The backward pass of a
matmul costs two forward passes (one product for the input's gradient, one
for the weight's), so a training step costs
`3 (encode + decode + denoise) + encode` (the last term without a teacher).
A sampling run costs one denoise per network evaluation plus one decode.

Example:
```python
from keras_dsd.models.dsd import dsd_flops
backbone = keras_dsd.models.DSDBackbone.from_preset("dsd_s")
dsd_flops.training_step_flops(backbone) / 1e9   # ~141
```

References:
- [Chowdhery et al., PaLM, appendix B (model FLOPs utilisation)](https://arxiv.org/abs/2204.02311)
"""

ROLES = ("encode", "decode", "denoise")

# `TimestepEmbedding`'s default number of sinusoidal features.
TIMESTEP_FREQUENCY_DIM = 256

_KEYS = (
    "image_size",
    "patch_size",
    "latent_channels",
    "hidden_dim",
    "num_layers",
    "num_heads",
)


def _architecture(backbone):
    """`backbone`: a `DSDBackbone`, its config dict, or a preset's config."""
    if isinstance(backbone, dict):
        config = backbone
    elif hasattr(backbone, "get_config"):
        config = backbone.get_config()
    else:
        raise ValueError(
            "dsd_flops: `backbone` must be a DSDBackbone or its config dict, "
            f"got {type(backbone).__name__}."
        )
    missing = [key for key in _KEYS if key not in config]
    if missing:
        raise ValueError(
            f"dsd_flops: the backbone config lacks {missing}; expected the "
            f"keys {list(_KEYS)}."
        )
    return {**{"mlp_ratio": 4.0}, **config}


def block_flops(num_tokens, hidden_dim, mlp_dim):
    """Forward FLOPs of one transformer block for one image."""
    n, d, h = num_tokens, hidden_dim, mlp_dim
    projections = n * (2 * d * 3 * d + 2 * d * d)  # qkv, output projection
    attention = 2 * (2 * n * n * d)  # Q K^T and weights @ V, all heads
    mlp = n * (2 * d * h + 2 * h * d)
    modulation = 2 * d * 6 * d  # adaLN-Zero: 6 vectors from the condition
    return projections + attention + mlp + modulation


def role_flops(backbone, role):
    """Forward FLOPs per image of one role: `"encode"`, `"decode"` or
    `"denoise"`.

    Args:
        backbone: a `DSDBackbone`, or its config dict (a preset's
            `"config"` works too).
        role: string. One of `"encode"`, `"decode"`, `"denoise"`.

    Returns:
        int. FLOPs (two per multiply-add) of the role's matrix products.
    """
    if role not in ROLES:
        raise ValueError(f"dsd_flops: role={role!r} is not one of {ROLES}.")
    config = _architecture(backbone)
    p = config["patch_size"]
    n = (config["image_size"] // p) ** 2
    d = config["hidden_dim"]
    c = config["latent_channels"]
    h = int(d * config["mlp_ratio"])
    pixels = p * p * 3
    trunk = config["num_layers"] * block_flops(n, d, h)
    head_modulation = 2 * d * 2 * d  # adaLN of the final layer
    if role == "encode":
        return 2 * n * pixels * d + trunk + head_modulation + 2 * n * d * c
    if role == "decode":
        return 2 * n * c * d + trunk + head_modulation + 2 * n * d * pixels
    time_mlp = 2 * TIMESTEP_FREQUENCY_DIM * d + 2 * d * d
    return 2 * n * c * d + time_mlp + trunk + head_modulation + 2 * n * d * c


def training_step_flops(backbone, teacher=True):
    """FLOPs per image of one training step of `DSDImageGenerator`.

    Online encode, decode and denoise, forward and backward (3x forward),
    plus the teacher's forward encode when `teacher` is true (the default
    `teacher="ema"` with a target-latent objective).

    Args:
        backbone: a `DSDBackbone` or its config dict.
        teacher: bool. Whether the step runs a separate teacher encoder.
            Defaults to `True`.

    Returns:
        int. FLOPs per image.
    """
    online = sum(role_flops(backbone, role) for role in ROLES)
    return 3 * online + (role_flops(backbone, "encode") if teacher else 0)


def sampling_flops(backbone, num_evaluations):
    """FLOPs per image of `generate`: `num_evaluations` denoiser calls and
    one decode (`keras_dsd.samplers.num_function_evaluations` gives the
    evaluations of a sampler; classifier-free guidance doubles them).

    Args:
        backbone: a `DSDBackbone` or its config dict.
        num_evaluations: int. Network evaluations of the sampler.

    Returns:
        int. FLOPs per image.
    """
    if (
        isinstance(num_evaluations, bool)
        or not isinstance(num_evaluations, int)
        or num_evaluations < 1
    ):
        raise ValueError(
            "dsd_flops: `num_evaluations` must be a positive int, got "
            f"{num_evaluations!r}."
        )
    return num_evaluations * role_flops(backbone, "denoise") + role_flops(
        backbone, "decode"
    )
