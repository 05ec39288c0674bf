"""Optimizers: Keras' own, with faster kernels where a backend has them."""

from keras_dsd.optimizers.adamw import AdamW
