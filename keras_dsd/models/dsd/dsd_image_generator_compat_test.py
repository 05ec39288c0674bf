"""Files written by an earlier keras_dsd still load (see testdata/)."""

import os

import keras
import numpy as np
import pytest

from keras_dsd.models import DSDBackbone
from keras_dsd.models import DSDImageGenerator
from keras_dsd.testing import test_utils

OLD = os.path.join(os.path.dirname(__file__), "testdata", "written_by_35003b4")


@pytest.fixture(scope="module")
def expected():
    return np.load(os.path.join(OLD, "expected.npz"))


def _check_outputs(model, expected):
    np.testing.assert_allclose(
        model.encode(expected["images"]), expected["latents"], atol=1e-5
    )
    generated = model.generate([0, 2], num_steps=2, seed=1).astype(int)
    assert np.abs(generated - expected["generated"]).max() <= 1


def test_old_preset_loads_with_its_weights(expected):
    model = DSDImageGenerator.from_preset(os.path.join(OLD, "preset"))
    _check_outputs(model, expected)
    backbone = DSDBackbone.from_preset(os.path.join(OLD, "preset"))
    assert backbone.count_params() == 12792


def test_old_keras_file_loads(expected):
    model = keras.saving.load_model(os.path.join(OLD, "model.keras"))
    _check_outputs(model, expected)


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="the file's optimizer state was written under JAX and loads only "
    "under the backend that wrote it",
)
def test_old_keras_file_continues_the_warmup():
    model = keras.saving.load_model(os.path.join(OLD, "model.keras"))
    # The file's optimizer made 2 updates; the EMA warm-up continues from
    # there instead of restarting at 0.
    images = test_utils.random_images(4, image_size=8)
    labels = test_utils.random_labels(4)
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.ema_step)) == 3
