"""The samplers on a problem whose ODE solution is known in closed form.

Data `z ~ N(mu, s^2)` per dimension and `z_t = t z + (1 - t) eps` give
Gaussian marginals `z_t ~ N(t mu, sigma_t^2)` with
`sigma_t^2 = t^2 s^2 + (1 - t)^2`, and the posterior mean

    E[z | z_t] = mu + t s^2 / sigma_t^2 * (z_t - t mu).

The probability-flow velocity is `v = E[z - eps | z_t] = (E[z | z_t] - z_t)
/ (1 - t)`. Its flow is affine, `z_t = t mu + sigma_t z_0`: differentiating
gives `dz_t/dt = mu + sigma_t' z_0` with `sigma_t' = (t s^2 - (1 - t)) /
sigma_t`, and substituting `z_0 = (z_t - t mu) / sigma_t` into `v` gives the
same expression. So the exact sampler maps noise `z_0` to `z_1 = mu + s z_0`.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_dsd import samplers
from keras_dsd.models.dsd import objectives
from keras_dsd.testing import test_utils

MU = 1.5
S = 0.5


def _sigma2(t):
    return t**2 * S**2 + (1.0 - t) ** 2


def posterior_mean(z, t):
    return MU + t * S**2 / _sigma2(t) * (z - t * MU)


def clean_latent_velocity(z, t):
    """A "network" predicting the clean latent, turned into a velocity the
    way the DSD objective does."""
    return objectives.velocity_from_prediction(
        "dsd", posterior_mean(z, t), z, t, 1e-6
    )


def analytic_velocity(z, t):
    """`mu + sigma_t' z_0` with `z_0 = (z - t mu) / sigma_t`; regular at 1."""
    return MU + (t * S**2 - (1.0 - t)) / _sigma2(t) * (z - t * MU)


def _noise(num_samples=4096, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_samples, 1, 1)).astype("float32")


def _sample(sampler, velocity, noise, num_steps, shift=1.0):
    grid = samplers.time_grid(num_steps, shift)
    return test_utils.to_numpy(
        samplers.get(sampler)(velocity, ops.convert_to_tensor(noise), grid)
    )


def _max_error(sampler, velocity, num_steps, shift=1.0):
    noise = _noise()
    samples = _sample(sampler, velocity, noise, num_steps, shift)
    return np.abs(samples - (MU + S * noise)).max()


# === Sampler exactness ===


@pytest.mark.parametrize("velocity", [clean_latent_velocity, analytic_velocity])
@pytest.mark.parametrize("sampler,num_steps", [("euler", 200), ("heun", 20)])
def test_reproduces_the_gaussian(sampler, num_steps, velocity):
    noise = _noise()
    samples = _sample(sampler, velocity, noise, num_steps)
    assert samples.shape == noise.shape
    # The 4096 noise draws have a sample mean / std off by about
    # 1 / sqrt(4096) = 0.016 from (0, 1); the exact map scales that by s.
    # Tolerance: 3 standard errors plus 0.01 for the discretisation.
    assert abs(samples.mean() - MU) < 3 * S / 64 + 0.01
    assert abs(samples.std() - S) < 3 * S / np.sqrt(2 * 4096) + 0.01
    # Per sample, against the exact solution of the ODE. The global error is
    # proportional to |z_0| (up to ~3.7 here): about 3 |z_0| / n for Euler
    # and 0.7 |z_0| / n^2 for Heun, both under 0.015 at these step counts.
    np.testing.assert_allclose(samples, MU + S * noise, atol=0.02)


def test_one_euler_step_lands_on_the_posterior_mean_of_pure_noise():
    # From t = 0 one step of the clean-latent velocity gives E[z | z_0] = mu.
    samples = _sample("euler", clean_latent_velocity, _noise(), 1)
    np.testing.assert_allclose(samples, MU, atol=1e-6)


def _numpy_heun(velocity, z, grid):
    """Reference Heun in float64 numpy: trapezoidal predictor-corrector
    steps, then a final Euler step (documented in `samplers.heun`)."""
    for t0, t1 in zip(grid[:-2], grid[1:-1]):
        v0 = velocity(z, t0)
        v1 = velocity(z + (t1 - t0) * v0, t1)
        z = z + (t1 - t0) * 0.5 * (v0 + v1)
    return z, z + (grid[-1] - grid[-2]) * velocity(z, grid[-2])


def _numpy_clean_latent_velocity(z, t):
    return (posterior_mean(z, t) - z) / (1.0 - t)


def test_heun_matches_numpy_reference():
    noise = _noise(64)
    grid = samplers.time_grid(4, shift=2.0).astype("float64")
    _, expected = _numpy_heun(
        _numpy_clean_latent_velocity, noise.astype("float64"), grid
    )
    actual = _sample("heun", clean_latent_velocity, noise, 4, shift=2.0)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_last_heun_step_lands_on_the_clean_latent_prediction():
    # Heun's last step is an Euler step from t_{n-1} to 1, which for the
    # clean-latent velocity is exactly the prediction E[z | z_{t_{n-1}}].
    noise = _noise(64)
    grid = samplers.time_grid(3).astype("float64")
    before_last, _ = _numpy_heun(
        _numpy_clean_latent_velocity, noise.astype("float64"), grid
    )
    expected = posterior_mean(before_last, grid[-2])
    actual = _sample("heun", clean_latent_velocity, noise, 3)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_euler_matches_numpy_reference():
    noise = _noise(64)
    grid = samplers.time_grid(5, shift=2.0).astype("float64")
    expected = noise.astype("float64")
    for t0, t1 in zip(grid[:-1], grid[1:]):
        expected = expected + (t1 - t0) * _numpy_clean_latent_velocity(
            expected, t0
        )
    actual = _sample("euler", clean_latent_velocity, noise, 5, shift=2.0)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("velocity", [clean_latent_velocity, analytic_velocity])
def test_errors_shrink_with_more_steps(velocity):
    for sampler in ("euler", "heun"):
        errors = [_max_error(sampler, velocity, n) for n in (4, 8, 16)]
        assert errors[0] > errors[1] > errors[2], (sampler, errors)


@pytest.mark.parametrize("velocity", [clean_latent_velocity, analytic_velocity])
@pytest.mark.parametrize("heun_steps", [4, 8, 16])
def test_heun_beats_euler_at_equal_evaluations(velocity, heun_steps):
    euler_steps = 2 * heun_steps - 1
    assert samplers.num_function_evaluations("heun", heun_steps) == (
        samplers.num_function_evaluations("euler", euler_steps)
    )
    heun_error = _max_error("heun", velocity, heun_steps)
    euler_error = _max_error("euler", velocity, euler_steps)
    assert heun_error < euler_error, (heun_error, euler_error)


def test_heun_converges_at_second_order():
    # Halving the step divides the error by about 4 (Euler: by about 2).
    heun = [_max_error("heun", analytic_velocity, n) for n in (16, 32)]
    euler = [_max_error("euler", analytic_velocity, n) for n in (16, 32)]
    assert 3.0 < heun[0] / heun[1] < 5.0, heun
    assert 1.6 < euler[0] / euler[1] < 2.4, euler


def test_shifted_grid_also_converges():
    errors = [
        _max_error("heun", analytic_velocity, n, shift=3.0)
        for n in (16, 32, 64)
    ]
    assert errors[2] < 0.02, errors
    assert errors[0] / errors[1] > 3.0 and errors[1] / errors[2] > 3.0


# === Network evaluations ===


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("num_steps", [1, 2, 5])
def test_num_function_evaluations_counts_calls(sampler, num_steps):
    calls = []

    def velocity(z, t):
        calls.append(1)
        return analytic_velocity(z, t)

    with test_utils.eager_loops():
        _sample(sampler, velocity, _noise(8), num_steps)
    expected = num_steps if sampler == "euler" else 2 * num_steps - 1
    assert samplers.num_function_evaluations(sampler, num_steps) == expected
    assert len(calls) == expected


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("start", [0, 2, 3, 4])
def test_start_integrates_the_tail_of_the_grid(start, as_tensor):
    # From `start`, the sampler is the numpy reference on grid[start:]; at
    # start = num_steps it returns its input without evaluating anything.
    noise = _noise(64)
    grid = samplers.time_grid(4, shift=2.0)
    tail = grid[start:].astype("float64")
    calls = []

    def velocity(z, t):
        calls.append(1)
        return clean_latent_velocity(z, t)

    for sampler in ("euler", "heun"):
        calls.clear()
        begin = ops.convert_to_tensor(start, "int32") if as_tensor else start
        with test_utils.eager_loops():
            actual = test_utils.to_numpy(
                samplers.get(sampler)(
                    velocity, ops.convert_to_tensor(noise), grid, begin
                )
            )
        z = noise.astype("float64")
        if len(tail) < 2:
            expected = z
        elif sampler == "heun":
            _, expected = _numpy_heun(_numpy_clean_latent_velocity, z, tail)
        else:
            expected = z
            for t0, t1 in zip(tail[:-1], tail[1:]):
                expected = expected + (t1 - t0) * (
                    _numpy_clean_latent_velocity(expected, t0)
                )
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
        steps = 4 - start
        assert len(calls) == (
            steps if sampler == "euler" else max(0, 2 * steps - 1)
        )


# === Time grid ===


def test_uniform_time_grid():
    grid = samplers.time_grid(4)
    assert grid.dtype == np.float32
    np.testing.assert_allclose(grid, [0.0, 0.25, 0.5, 0.75, 1.0], atol=1e-7)


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("num_steps", [1, 7, 32])
def test_time_grid_endpoints_and_monotonicity(num_steps, shift):
    grid = samplers.time_grid(num_steps, shift)
    assert grid.shape == (num_steps + 1,)
    assert grid[0] == 0.0 and grid[-1] == 1.0
    assert np.all(np.diff(grid) > 0)


def test_time_shift_is_the_sd3_shift_of_the_noise_level():
    # SD3: sigma' = shift * sigma / (1 + (shift - 1) * sigma), t = 1 - sigma.
    shift = 3.0
    sigma = 1.0 - np.linspace(0.0, 1.0, 9)
    expected = 1.0 - shift * sigma / (1.0 + (shift - 1.0) * sigma)
    grid = samplers.time_grid(8, shift)
    np.testing.assert_allclose(grid, expected, atol=1e-6)
    # shift > 1 spends more of the steps at high noise (small t).
    uniform = samplers.time_grid(8)
    assert np.all(grid[1:-1] < uniform[1:-1])
    assert np.all(samplers.time_grid(8, 0.5)[1:-1] > uniform[1:-1])


@pytest.mark.parametrize("shift", [0.0, -1.0])
def test_bad_shift_raises(shift):
    with pytest.raises(ValueError, match="shift"):
        samplers.time_grid(4, shift)


# === Bad arguments ===


@pytest.mark.parametrize("num_steps", [0, -3, 2.5, True, "4"])
def test_bad_num_steps_raises(num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        samplers.time_grid(num_steps)
    with pytest.raises(ValueError, match="num_steps"):
        samplers.num_function_evaluations("euler", num_steps)


def test_unknown_sampler_raises():
    with pytest.raises(ValueError, match="sampler='rk4'"):
        samplers.get("rk4")
    with pytest.raises(ValueError, match="sampler"):
        samplers.num_function_evaluations("rk4", 4)


def test_numpy_integer_steps_are_accepted():
    assert samplers.num_function_evaluations("heun", np.int64(4)) == 7
    assert samplers.time_grid(np.int32(2)).shape == (3,)


def test_registry():
    assert set(samplers.SAMPLERS) == {"euler", "heun"}
    assert samplers.get("euler") is samplers.euler
    assert samplers.get("heun") is samplers.heun
    assert keras.backend.backend() in ("jax", "tensorflow", "torch")


def test_a_new_sampler_is_one_registered_function(monkeypatch):
    # A throwaway midpoint sampler: registering it is the only edit, and
    # its recorded NFE is what a real run of it calls.
    monkeypatch.setattr(samplers, "SAMPLERS", dict(samplers.SAMPLERS))

    @samplers.register_sampler("midpoint", lambda num_steps: 2 * num_steps)
    def midpoint(velocity_fn, latents, timesteps):
        timesteps = ops.convert_to_tensor(timesteps, "float32")

        def step(i, z):
            t0 = ops.take(timesteps, i)
            dt = ops.take(timesteps, i + 1) - t0
            half = z + 0.5 * dt * velocity_fn(z, t0)
            return z + dt * velocity_fn(half, t0 + 0.5 * dt)

        return ops.fori_loop(0, timesteps.shape[0] - 1, step, latents)

    calls = []

    def velocity(z, t):
        calls.append(1)
        return analytic_velocity(z, t)

    with test_utils.eager_loops():
        _sample("midpoint", velocity, _noise(8), 3)
    assert samplers.check_sampler("midpoint") == "midpoint"
    assert samplers.get("midpoint") is midpoint
    assert samplers.num_function_evaluations("midpoint", 3) == len(calls) == 6


def test_check_sampler():
    assert samplers.check_sampler("heun") == "heun"
    with pytest.raises(ValueError, match="sampler='rk4'.*Expected one of"):
        samplers.check_sampler("rk4")
