"""keras_dsd: Diffusion as Self-Distillation in Keras 3."""

# First: on JAX's CPU it sets malloc up before Keras imports TensorFlow
# and before JAX starts threads (`keras_dsd.backend.jax_cpu`).
from keras_dsd import backend  # noqa: F401, I001
from keras_dsd import callbacks
from keras_dsd import datasets
from keras_dsd import evaluation
from keras_dsd import layers
from keras_dsd import metrics
from keras_dsd import models
from keras_dsd import optimizers
from keras_dsd import recipes
from keras_dsd import samplers
from keras_dsd import utils
from keras_dsd.version import __version__
