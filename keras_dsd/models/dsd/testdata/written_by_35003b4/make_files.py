"""Writes a preset folder and a .keras file with keras_dsd as of 35003b4."""

import os
import sys

import keras
import numpy as np

import keras_dsd
from keras_dsd.utils import test_utils

out = sys.argv[1]
keras.utils.set_random_seed(0)
backbone = keras_dsd.models.DSDBackbone(**test_utils.TINY_CONFIG)
model = keras_dsd.models.DSDImageGenerator(backbone=backbone, seed=0)
model.compile()
images = test_utils.random_images(8, image_size=8)
labels = test_utils.random_labels(8)
model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
model.save_to_preset(os.path.join(out, "preset"))
model.save(os.path.join(out, "model.keras"))
latents = model.encode(images[:2])
np.savez(
    os.path.join(out, "expected.npz"),
    images=images[:2],
    latents=latents,
    generated=model.generate([0, 2], num_steps=2, seed=1),
)
print(keras_dsd.__version__, keras.backend.backend())
