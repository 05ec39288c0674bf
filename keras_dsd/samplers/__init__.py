"""Fixed-grid ODE samplers for the probability-flow ODE `dz/dt = v(z, t)`.

Time runs from `t = 0` (pure noise) to `t = 1` (data). Each sampler is one
function `sampler(velocity_fn, latents, timesteps, start=0)` written with
`keras.ops.fori_loop`, so that JAX and TensorFlow compile the whole loop
into one XLA program; PyTorch runs it eagerly, one step after another.
`velocity_fn(z, t)` takes the latents and a scalar time. `start` (an int
or an int32 scalar tensor) skips the first steps of the grid: the sampler
integrates from `timesteps[start]`, which is how image-to-image runs part
of the grid with one compiled function for every strength.

`SAMPLERS` is the registry: each entry records the function and its
number of network evaluations for a given step count. To add a sampler,
write one function here under `@register_sampler(name, nfe)`.
"""

import dataclasses
from typing import Callable

import numpy as np
from keras import ops


@dataclasses.dataclass(frozen=True)
class Sampler:
    """One registered sampler.

    Attributes:
        name: string. The name `generate(sampler=...)` takes.
        fn: callable `(velocity_fn, latents, timesteps, start=0)` ->
            latents at the last time of `timesteps`, integrated from
            `timesteps[start]`.
        num_function_evaluations: callable `num_steps` -> network
            evaluations (NFE) of `num_steps` steps.
    """

    name: str
    fn: Callable
    num_function_evaluations: Callable


SAMPLERS = {}


def register_sampler(name, num_function_evaluations):
    """Decorator: adds the decorated function to `SAMPLERS` as `name`,
    with `num_function_evaluations(num_steps)` its NFE."""

    def register(fn):
        SAMPLERS[name] = Sampler(name, fn, num_function_evaluations)
        return fn

    return register


def time_grid(num_steps, shift=1.0):
    """The `num_steps + 1` times `0 = t_0 < ... < t_n = 1` of a fixed grid.

    `shift = 1` is uniform. `shift > 1` spends more steps at high noise
    (small `t`), using the time shift of Stable Diffusion 3 written for
    `t = 1 - sigma`: `t = s / (1 + (shift - 1) * (1 - s))` on a uniform `s`.
    """
    check_num_steps(num_steps)
    check_time_shift(shift)
    s = np.linspace(0.0, 1.0, num_steps + 1)
    return (s / (1.0 + (shift - 1.0) * (1.0 - s))).astype("float32")


@register_sampler("euler", lambda num_steps: num_steps)
def euler(velocity_fn, latents, timesteps, start=0):
    """Explicit Euler: one network evaluation per step."""
    timesteps = ops.convert_to_tensor(timesteps, "float32")
    num_steps = timesteps.shape[0] - 1

    def step(i, z):
        t0 = ops.take(timesteps, i)
        t1 = ops.take(timesteps, i + 1)
        return z + (t1 - t0) * velocity_fn(z, t0)

    return ops.fori_loop(start, num_steps, step, latents)


@register_sampler("heun", lambda num_steps: 2 * num_steps - 1)
def heun(velocity_fn, latents, timesteps, start=0):
    """Heun's second-order method; the last step is an Euler step.

    The corrector of the last step would evaluate the network at `t = 1`,
    where the clean-latent velocity `(z_hat - z) / (1 - t)` is undefined, so
    the last step lands on the network's clean-latent prediction instead
    (as EDM does at `sigma = 0`). `2 * num_steps - 1` network evaluations;
    from `start`, `2 * (num_steps - start) - 1`, and none when `start` is
    `num_steps`.
    """
    timesteps = ops.convert_to_tensor(timesteps, "float32")
    num_steps = timesteps.shape[0] - 1

    def step(i, z):
        t0 = ops.take(timesteps, i)
        t1 = ops.take(timesteps, i + 1)
        v0 = velocity_fn(z, t0)
        v1 = velocity_fn(z + (t1 - t0) * v0, t1)
        return z + (t1 - t0) * 0.5 * (v0 + v1)

    z = ops.fori_loop(start, num_steps - 1, step, latents)
    t0 = ops.take(timesteps, num_steps - 1)
    t1 = ops.take(timesteps, num_steps)

    def last_step():
        return z + (t1 - t0) * velocity_fn(z, t0)

    if isinstance(start, (int, np.integer)):
        return last_step() if start < num_steps else z
    # One branch runs: no network evaluation when every step is skipped.
    return ops.cond(ops.less(start, num_steps), last_step, lambda: z)


def check_num_steps(num_steps):
    if (
        isinstance(num_steps, bool)
        or not isinstance(num_steps, (int, np.integer))
        or num_steps < 1
    ):
        raise ValueError(
            f"`num_steps` must be an int >= 1, got num_steps={num_steps!r}."
        )
    return int(num_steps)


def check_sampler(name):
    """Returns `name` if it is a registered sampler, else raises a clear
    `ValueError`."""
    if name not in SAMPLERS:
        raise ValueError(
            f"Unknown sampler: sampler={name!r}. Expected one of "
            f"{sorted(SAMPLERS)}."
        )
    return name


def check_time_shift(shift):
    """Returns `shift` if it is a valid time-grid shift (a float > 0)."""
    if not shift > 0:
        raise ValueError(f"`shift` must be > 0, got shift={shift!r}.")
    return shift


def check_guidance_interval(interval, guidance_scale):
    """Returns `interval` as a pair of floats `(t_low, t_high)` with
    `0 <= t_low < t_high <= 1` (sampler time: `t = 0` noise, `t = 1`
    clean), else raises a clear `ValueError`. An interval needs a
    `guidance_scale` to apply."""
    try:
        t_low, t_high = (float(t) for t in interval)
    except (TypeError, ValueError):
        raise ValueError(
            "`guidance_interval` must be a pair (t_low, t_high) of floats "
            f"with 0 <= t_low < t_high <= 1, got "
            f"guidance_interval={interval!r}."
        ) from None
    if not 0.0 <= t_low < t_high <= 1.0:
        raise ValueError(
            "`guidance_interval` must satisfy 0 <= t_low < t_high <= 1, got "
            f"guidance_interval={interval!r}."
        )
    if guidance_scale is None:
        raise ValueError(
            f"`guidance_interval` needs a `guidance_scale`, got "
            f"guidance_interval={interval!r} with guidance_scale=None."
        )
    return (t_low, t_high)


def get(name):
    """Returns the sampler function called `name` (see `SAMPLERS`)."""
    return SAMPLERS[check_sampler(name)].fn


def num_function_evaluations(name, num_steps):
    """Network evaluations (NFE) of `num_steps` steps of sampler `name`.

    With classifier-free guidance each evaluation runs a doubled batch.
    """
    sampler = SAMPLERS[check_sampler(name)]
    return sampler.num_function_evaluations(check_num_steps(num_steps))
