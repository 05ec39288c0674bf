"""benchmarks/layer_calls.py: its count of layer calls, and its backend."""

import sys

import keras
import numpy as np
import pytest


@pytest.fixture(scope="module")
def layer_calls(load_benchmark):
    return load_benchmark("layer_calls")


class TwoDense(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(3)
        self.second = keras.layers.Dense(2)

    def call(self, x):
        return self.second(self.first(x) + self.first(x))


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="eager layer calls at every step: PyTorch",
)
def test_counts_every_nested_layer_call_of_a_step(layer_calls):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, TwoDense()(inputs))
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((2, 4), "float32"), np.zeros((2, 2), "float32")
    model.train_on_batch(x, y)
    # The model, TwoDense, and its Dense layers three times.
    expected = {"Functional": 1, "TwoDense": 1, "Dense": 3}
    assert layer_calls.count_layer_calls(model, x, y) == expected
    assert layer_calls.count_layer_calls(model, x, y) == expected
    # The wrapper is gone afterwards.
    assert keras.layers.Layer.__call__.__name__ == "__call__"


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="refusal")
def test_refuses_backends_that_trace_the_step(layer_calls, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["layer_calls.py"])
    with pytest.raises(SystemExit, match="use KERAS_BACKEND=torch"):
        layer_calls.main()
