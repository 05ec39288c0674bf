import keras
import numpy as np
import pytest

import keras_dsd
from keras_dsd import backend


class CountingModel(keras.Model):
    """A linear model whose `train_step` adds its kernel's first entry to a
    non-trainable running sum after each step, through
    `backend.train_step_with_updates`."""

    def __init__(self, assign_trainable=False):
        super().__init__()
        self.dense = keras.layers.Dense(1, use_bias=False)
        self.dense.build((None, 1))
        self.total = keras.Variable(0.0, trainable=False, name="total")
        self.assign_trainable = assign_trainable

    def call(self, x):
        return self.dense(x)

    def train_step(self, *args):
        return backend.train_step_with_updates(
            self,
            super().train_step,
            args,
            before=lambda: keras.ops.copy(self.dense.kernel[0, 0]),
            after=self._after,
        )

    def _after(self, kernel_before):
        if self.assign_trainable:
            self.dense.kernel.assign(self.dense.kernel * 0.0)
            return
        # Before and after the optimizer step, as the step saw them.
        self.total.assign(
            self.total.value + kernel_before + self.dense.kernel[0, 0]
        )


def _fit(model, steps):
    x = np.ones((steps, 1), "float32")
    model.compile(optimizer=keras.optimizers.SGD(0.25), loss="mse")
    model.dense.kernel.assign([[0.0]])
    model.fit(x, x, batch_size=1, epochs=1, shuffle=False, verbose=0)


def test_updates_run_after_each_step_with_the_value_from_before():
    model = CountingModel()
    _fit(model, steps=2)
    # y = w x with x = y = 1, mse: w <- w - 0.25 * 2 (w - 1) = 0.5 w + 0.5.
    # w: 0 -> 0.5 -> 0.75; total = (0 + 0.5) + (0.5 + 0.75) = 1.75.
    np.testing.assert_allclose(float(model.dense.kernel[0, 0]), 0.75)
    np.testing.assert_allclose(float(model.total), 1.75, rtol=1e-6)


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="Only JAX's stateless step restricts what `after` assigns.",
)
def test_jax_refuses_an_update_of_a_trainable_variable():
    model = CountingModel(assign_trainable=True)
    with pytest.raises(ValueError, match="only non-trainable.*kernel"):
        _fit(model, steps=1)


def test_gelu_is_the_exact_erf_form():
    import math

    x = np.array([-6.0, -3.0, -1.0, -0.25, 0.0, 0.5, 1.0, 2.5, 8.0], "float32")
    # x * Phi(x) with Python's double-precision erf. The absolute
    # tolerance covers float32 erf round-off near -3..-6 (torch's kernel is
    # off by 5e-7 there, where GELU itself is ~-4e-3..-6e-9).
    expected = [v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(
            backend.gelu(keras.ops.convert_to_tensor(x))
        ),
        expected,
        rtol=1e-6,
        atol=1e-6,
    )
    # Hand values: gelu(1) = Phi(1) = 0.841345, gelu(-1) = -(1 - Phi(1)).
    got = keras.ops.convert_to_numpy(
        backend.gelu(
            keras.ops.convert_to_tensor(np.array([1.0, -1.0], "float32"))
        )
    )
    np.testing.assert_allclose(got, [0.8413447, -0.1586553], atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_move_averages_is_decay_times_average_plus_rest_times_weight(dtype):
    rng = np.random.default_rng(0)
    old = [rng.normal(size=s).astype("float32") for s in [(3, 4), (4,)]]
    new = [rng.normal(size=s).astype("float32") for s in [(3, 4), (4,)]]
    averages = [keras.Variable(v, dtype=dtype, trainable=False) for v in old]
    weights = [keras.Variable(v, dtype=dtype) for v in new]
    # Values as the variables hold them (bfloat16 rounds on assignment).
    old = [
        keras.ops.convert_to_numpy(keras.ops.cast(v, "float32"))
        for v in averages
    ]
    new = [
        keras.ops.convert_to_numpy(keras.ops.cast(v, "float32"))
        for v in weights
    ]
    backend.move_averages(
        averages, weights, keras.ops.convert_to_tensor(0.75, "float32")
    )
    tolerance = 1e-6 if dtype == "float32" else 1e-2
    for average, a, w in zip(averages, old, new):
        got = keras.ops.convert_to_numpy(keras.ops.cast(average, "float32"))
        np.testing.assert_allclose(
            got, 0.75 * a + 0.25 * w, rtol=tolerance, atol=tolerance
        )
    # The weights themselves are untouched.
    for weight, w in zip(weights, new):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(keras.ops.cast(weight, "float32")), w
        )


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.compile's settings"
)
def test_compiled_training_raises_dynamos_recompile_limit():
    import torch._dynamo

    from keras_dsd.testing import test_utils

    config = torch._dynamo.config
    # torch's own patch context, not pytest's monkeypatch: monkeypatch
    # cannot see these settings statically and deletes them when it undoes,
    # which hides them from every later test of the process.
    with config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        model = keras_dsd.models.DSDImageGenerator(
            backbone=test_utils.tiny_backbone(), seed=0
        )
        # Eager: left alone.
        model.compile(jit_compile=False)
        assert config.recompile_limit == 8
        # Compiled: room for a version of a frame per Dense of the blocks
        # (six in each block of the network, teacher and EMA copies), which
        # also covers a block's own frames per instance and gradient mode.
        backbones = [model.backbone, model.teacher_backbone, model.ema_backbone]
        blocks = sum(len(b.transformer_blocks) for b in backbones)
        assert blocks == 3 * test_utils.TINY_CONFIG["num_layers"]
        model.compile(jit_compile=True)
        assert config.recompile_limit >= 6 * blocks
        assert config.accumulated_recompile_limit == 256
        # Never lowered.
        config.recompile_limit = 10_000
        model.compile(jit_compile=True)
        assert config.recompile_limit == 10_000
