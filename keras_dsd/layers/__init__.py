"""Building blocks of the DSD network, written with `keras.ops` only."""

from keras_dsd.layers.adaptive_layer_norm import AdaptiveLayerNorm
from keras_dsd.layers.adaptive_layer_norm import FinalLayer
from keras_dsd.layers.class_embedding import ClassEmbedding
from keras_dsd.layers.class_embedding import RoleEmbedding
from keras_dsd.layers.dense import Dense
from keras_dsd.layers.patch_embedding import PatchEmbedding
from keras_dsd.layers.patch_embedding import patchify
from keras_dsd.layers.patch_embedding import unpatchify
from keras_dsd.layers.position_embedding import SinCosPositionEmbedding2D
from keras_dsd.layers.position_embedding import sincos_position_embedding_2d
from keras_dsd.layers.timestep_embedding import TimestepEmbedding
from keras_dsd.layers.timestep_embedding import sinusoidal_embedding
from keras_dsd.layers.transformer_block import DSDTransformerBlock
from keras_dsd.layers.transformer_block import SelfAttention
