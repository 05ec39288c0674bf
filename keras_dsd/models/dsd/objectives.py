"""The training objectives of DSD and its ablations, in one table.

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

Each mode is one `Objective` record in `OBJECTIVES`: what the network
predicts, whether the mode reads a separate (stop-gradient) target latent,
and its per-example loss term. To add a mode, add one entry to the table:
the task reads it (at call time) to build the loss and to turn the network
output into the velocity that the samplers integrate, and the scripts'
`--objective` choices list its names. The samplers only see that velocity.
"""

import dataclasses
from typing import Callable

from keras import ops

CLEAN_LATENT = "clean_latent"
VELOCITY = "velocity"


@dataclasses.dataclass(frozen=True)
class Objective:
    """One objective mode.

    Attributes:
        name: string. The mode's name, as passed to `DSDImageGenerator`.
        output: string. What the network predicts: `"clean_latent"` or
            `"velocity"`.
        uses_target_latent: bool. Whether the loss reads a separate target
            latent `z2` (then a stop-gradient is applied to it, and the
            task may take it from an EMA teacher). `False` means the target
            is built from the online latent, gradients included.
        loss: callable `(prediction, online, target, noise, t, t_min)` ->
            per-example loss `(B,)` in float32. `target` is `None` when
            `uses_target_latent` is `False`, else already stop-gradient.
    """

    name: str
    output: str
    uses_target_latent: bool
    loss: Callable


def _per_example_mse(a, b):
    return ops.mean(ops.square(a - b), axis=(1, 2))


def _naive_loss(prediction, online, target, noise, t, t_min):
    return _per_example_mse(prediction, online - noise)


def _decoupled_loss(prediction, online, target, noise, t, t_min):
    return _per_example_mse(prediction, target - noise)


def _dsd_loss(prediction, online, target, noise, t, t_min):
    return dsd_loss_weight(t, t_min) * _per_example_mse(prediction, target)


OBJECTIVES = {
    objective.name: objective
    for objective in (
        Objective("naive", VELOCITY, False, _naive_loss),
        Objective("decoupled", VELOCITY, True, _decoupled_loss),
        Objective("dsd", CLEAN_LATENT, True, _dsd_loss),
    )
}


def get(objective):
    """Returns the `Objective` record called `objective`, or raises a clear
    `ValueError`."""
    if objective not in OBJECTIVES:
        raise ValueError(
            f"Unknown objective: objective={objective!r}. Expected one of "
            f"{list(OBJECTIVES)}."
        )
    return OBJECTIVES[objective]


def check_objective(objective):
    get(objective)
    return objective


def noisy_latents(latents, noise, t):
    """`z_t = t * z + (1 - t) * eps`, with `t` of shape `(B,)`."""
    t = t[:, None, None]
    return t * latents + (1.0 - t) * noise


def dsd_loss_weight(t, t_min):
    """`w(t) = 1 / max(1 - t, t_min)**2`, shape `(B,)`."""
    return 1.0 / ops.square(ops.maximum(1.0 - t, t_min))


def diffusion_loss(
    objective, prediction, online_latents, target_latents, noise, t, t_min
):
    """Mean diffusion loss of one batch, in float32.

    Args:
        objective: string. A name in `OBJECTIVES`.
        prediction: `(B, N, c)` network output (velocity or clean latent).
        online_latents: `(B, N, c)` `z1` from the online encoder (gradients
            flow through it).
        target_latents: `(B, N, c)` `z2`, the target latent (teacher or
            online), or `None` for a mode without one. A stop-gradient is
            applied here.
        noise: `(B, N, c)` the `eps` that built `z_t`.
        t: `(B,)` times in `[0, 1]`.
        t_min: float. Lower clamp of `1 - t` in the `dsd` weight.
    """
    record = get(objective)
    prediction = ops.cast(prediction, "float32")
    if record.uses_target_latent:
        target_latents = ops.stop_gradient(
            ops.convert_to_tensor(target_latents)
        )
    else:
        target_latents = None
    per_example = record.loss(
        prediction, online_latents, target_latents, noise, t, t_min
    )
    return ops.mean(per_example)


def velocity_from_prediction(objective, prediction, noisy, t, t_min):
    """The probability-flow velocity `dz/dt` from the network output.

    For a clean-latent mode `v = (z_hat - z_t) / max(1 - t, t_min)`; the
    velocity modes return the output as it is. `t` is a scalar or `(B,)`.
    """
    if get(objective).output == VELOCITY:
        return prediction
    t = ops.reshape(ops.cast(t, "float32"), (-1, 1, 1))
    return (prediction - noisy) / ops.maximum(1.0 - t, t_min)
