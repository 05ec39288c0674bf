"""keras_dsd: Diffusion as Self-Distillation in Keras 3."""

from keras_dsd import callbacks
from keras_dsd import datasets
from keras_dsd import evaluation
from keras_dsd import layers
from keras_dsd import metrics
from keras_dsd import models
from keras_dsd import recipes
from keras_dsd import samplers
from keras_dsd import utils
from keras_dsd.version import __version__
