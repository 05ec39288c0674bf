import keras
import numpy as np
import pytest

from keras_dsd.optimizers import AdamW
from keras_dsd.testing import test_utils

SHAPES = [(3, 4), (4,), (2, 2, 3)]


def _variables_and_gradients(steps, seed=0):
    """Three float32 variables and `steps` gradients for each: per step,
    one of norm well above 1 (clipped by the tests' `clipnorm=0.5`), one
    well below 0.5 and one that is zero."""
    rng = np.random.default_rng(seed)
    values = [rng.normal(size=s).astype("float32") for s in SHAPES]
    grads = [
        [
            rng.normal(size=SHAPES[0]).astype("float32") * 3.0,
            rng.normal(size=SHAPES[1]).astype("float32") * 0.01,
            np.zeros(SHAPES[2], "float32"),
        ]
        for _ in range(steps)
    ]
    return values, grads


def _numpy_adamw(values, grads, lr, weight_decay, clipnorm, eps, amsgrad):
    """Keras' AdamW in float64: weight decay `w <- w (1 - lr wd)`, each
    gradient clipped to norm `clipnorm`, then the Adam step with epsilon
    added to `sqrt(v)` before the bias correction."""
    beta_1, beta_2 = 0.9, 0.999
    w = [v.astype("float64") for v in values]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    v_hat = [np.zeros_like(x) for x in w]
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            g = g.astype("float64")
            g = g * clipnorm / max(np.sqrt((g**2).sum()), clipnorm)
            w[i] = w[i] * (1 - lr * weight_decay)
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g**2
            v_hat[i] = np.maximum(v_hat[i], v[i])
            second = v_hat[i] if amsgrad else v[i]
            alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
            w[i] = w[i] - alpha * m[i] / (np.sqrt(second) + eps)
    return w


# epsilon 1e-3: large enough that adding it before or after the bias
# correction changes the first update by about 20 % for the large
# gradient and about 4x for the small one (sqrt(v) = |g| sqrt(1 - 0.999)).
@pytest.mark.parametrize("amsgrad", [False, True])
def test_updates_are_clipped_adamw_computed_in_numpy(amsgrad):
    values, grads = _variables_and_gradients(steps=3)
    variables = [keras.Variable(v) for v in values]
    optimizer = AdamW(
        learning_rate=1e-2,
        weight_decay=0.1,
        clipnorm=0.5,
        epsilon=1e-3,
        amsgrad=amsgrad,
    )
    for step_grads in grads:
        tensors = [keras.ops.array(g) for g in step_grads]
        # The first as a transposed view (on PyTorch, not contiguous).
        transposed = np.ascontiguousarray(step_grads[0].T)
        tensors[0] = keras.ops.transpose(keras.ops.array(transposed))
        optimizer.apply(tensors, variables)
    expected = _numpy_adamw(values, grads, 1e-2, 0.1, 0.5, 1e-3, amsgrad)
    for variable, want in zip(variables, expected):
        np.testing.assert_allclose(
            test_utils.to_numpy(variable), want, rtol=1e-5, atol=1e-6
        )
    assert int(test_utils.to_numpy(optimizer.iterations)) == 3


def test_matches_keras_adamw_with_a_schedule_and_gradient_accumulation():
    # Keras' own update is the reference: the step count that its bias
    # correction uses while gradients accumulate is Keras' choice.
    values, grads = _variables_and_gradients(steps=6, seed=1)
    schedule = keras.optimizers.schedules.PolynomialDecay(1e-2, 6, 1e-3)
    results = []
    for cls in (AdamW, keras.optimizers.AdamW):
        variables = [keras.Variable(v) for v in values]
        optimizer = cls(
            learning_rate=schedule,
            weight_decay=0.05,
            clipnorm=0.5,
            epsilon=1e-3,
            gradient_accumulation_steps=2,
        )
        for step_grads in grads:
            optimizer.apply([keras.ops.array(g) for g in step_grads], variables)
        results.append([test_utils.to_numpy(v) for v in variables])
    moved = [np.abs(a - b).max() for a, b in zip(results[0], values)]
    assert min(moved[:2]) > 1e-3  # three updates happened
    for ours, keras_result in zip(*results):
        np.testing.assert_allclose(ours, keras_result, rtol=1e-6, atol=1e-7)


def test_a_nan_gradient_gives_nan_weights_as_in_keras():
    variable = keras.Variable(np.ones((2, 2), "float32"))
    AdamW(learning_rate=1e-2, clipnorm=1.0).apply(
        [keras.ops.array(np.full((2, 2), np.nan, "float32"))], [variable]
    )
    assert np.isnan(test_utils.to_numpy(variable)).all()


def test_config_is_keras_adamw_config_and_round_trips():
    optimizer = AdamW(learning_rate=3e-4, weight_decay=0.01, clipnorm=0.5)
    assert optimizer.get_config() == keras.optimizers.AdamW(
        learning_rate=3e-4, weight_decay=0.01, clipnorm=0.5
    ).get_config() | {"name": optimizer.name}
    restored = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer)
    )
    assert type(restored) is AdamW
    assert restored.get_config() == optimizer.get_config()
    assert isinstance(optimizer, keras.optimizers.AdamW)


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="PyTorch's kernels"
)
# With `amsgrad`, Keras' multi-tensor update runs instead.
@pytest.mark.parametrize("amsgrad, fused_calls", [(False, 1), (True, 0)])
def test_pytorch_cpu_update_is_one_fused_kernel_where_exact(
    monkeypatch, amsgrad, fused_calls
):
    import torch

    calls = []
    fused = torch._fused_adam_

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", counting)
    values, grads = _variables_and_gradients(steps=1)
    variables = [keras.Variable(v) for v in values]
    optimizer = AdamW(learning_rate=1e-2, clipnorm=1.0, amsgrad=amsgrad)
    optimizer.apply([keras.ops.array(g) for g in grads[0]], variables)
    assert calls == [len(SHAPES)] * fused_calls
