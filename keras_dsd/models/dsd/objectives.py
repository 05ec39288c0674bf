"""The training objectives of DSD and its ablations, in one place.

With `z_t = t * z1 + (1 - t) * eps` (t = 1 clean, t = 0 noise):

| mode | network output | diffusion target | gradient into target |
|---|---|---|---|
| `naive` | velocity | `z1 - eps` | yes (online latent) |
| `decoupled` | velocity | `stop_gradient(z2) - eps` | no |
| `dsd` | clean latent | `stop_gradient(z2)` | no |

`z1` is the online encoder's latent, `z2` the teacher's. For the `dsd`
mode the loss is weighted by `w(t) = 1 / max(1 - t, t_min)**2`, which makes
it equal to the velocity loss (the identity
`||v - (z - eps)||^2 = ||z_hat - z||^2 / (1 - t)^2` for
`v = (z_hat - z_t) / (1 - t)`).

To add a mode, add one entry to `OBJECTIVES` and one branch to
`diffusion_loss` and `velocity_from_prediction`.
"""

from keras import ops

OBJECTIVES = ("naive", "decoupled", "dsd")

# Which modes read a separate target latent `z2` (and so may use a teacher).
USES_TARGET_LATENT = {"naive": False, "decoupled": True, "dsd": True}
# Which modes make the network predict the clean latent (vs the velocity).
PREDICTS_CLEAN_LATENT = {"naive": False, "decoupled": False, "dsd": True}


def check_objective(objective):
    if objective not in OBJECTIVES:
        raise ValueError(
            f"Unknown objective: objective={objective!r}. Expected one of "
            f"{list(OBJECTIVES)}."
        )
    return objective


def noisy_latents(latents, noise, t):
    """`z_t = t * z + (1 - t) * eps`, with `t` of shape `(B,)`."""
    t = t[:, None, None]
    return t * latents + (1.0 - t) * noise


def dsd_loss_weight(t, t_min):
    """`w(t) = 1 / max(1 - t, t_min)**2`, shape `(B,)`."""
    return 1.0 / ops.square(ops.maximum(1.0 - t, t_min))


def diffusion_loss(objective, prediction, online_latents, target_latents,
                   noise, t, t_min):
    """Mean diffusion loss of one batch, in float32.

    Args:
        objective: string. One of `"naive"`, `"decoupled"`, `"dsd"`.
        prediction: `(B, N, c)` network output (velocity or clean latent).
        online_latents: `(B, N, c)` `z1` from the online encoder (gradients
            flow through it).
        target_latents: `(B, N, c)` `z2`, the target latent (teacher or
            online), or `None` for `"naive"`. A stop-gradient is applied here.
        noise: `(B, N, c)` the `eps` that built `z_t`.
        t: `(B,)` times in `[0, 1]`.
        t_min: float. Lower clamp of `1 - t` in the `dsd` weight.
    """
    check_objective(objective)
    prediction = ops.cast(prediction, "float32")
    if objective == "naive":
        target = online_latents - noise
        return ops.mean(ops.square(prediction - target))
    target_latents = ops.stop_gradient(ops.convert_to_tensor(target_latents))
    if objective == "decoupled":
        target = target_latents - noise
        return ops.mean(ops.square(prediction - target))
    per_example = ops.mean(ops.square(prediction - target_latents), axis=(1, 2))
    return ops.mean(dsd_loss_weight(t, t_min) * per_example)


def velocity_from_prediction(objective, prediction, noisy, t, t_min):
    """The probability-flow velocity `dz/dt` from the network output.

    For the clean-latent mode `v = (z_hat - z_t) / max(1 - t, t_min)`; the
    velocity modes return the output as it is. `t` is a scalar or `(B,)`.
    """
    if not PREDICTS_CLEAN_LATENT[objective]:
        return prediction
    t = ops.reshape(ops.cast(t, "float32"), (-1, 1, 1))
    return (prediction - noisy) / ops.maximum(1.0 - t, t_min)
