import keras
import numpy as np
import pytest

from keras_dsd.layers.position_embedding import SinCosPositionEmbedding2D
from keras_dsd.layers.position_embedding import sincos_position_embedding_2d
from keras_dsd.testing import test_utils


def _table(grid_size=4, dim=16):
    layer = SinCosPositionEmbedding2D(grid_size)
    zeros = np.zeros((2, grid_size * grid_size, dim), "float32")
    return layer, test_utils.to_numpy(layer(zeros))


def test_adds_the_same_table_to_every_example():
    layer, table = _table()
    assert table.shape == (2, 16, 16)
    np.testing.assert_array_equal(table[0], table[1])
    tokens = np.random.default_rng(0).normal(size=(2, 16, 16))
    tokens = tokens.astype("float32")
    np.testing.assert_allclose(
        test_utils.to_numpy(layer(tokens)), tokens + table, atol=1e-6
    )


def test_row_half_depends_on_row_and_column_half_on_column():
    grid, dim = 4, 16
    _, table = _table(grid, dim)
    table = table[0].reshape(grid, grid, dim)  # (row, col, channel)
    row_part, col_part = table[..., : dim // 2], table[..., dim // 2 :]
    for r in range(grid):
        # Tokens in the same row share the row part ...
        np.testing.assert_array_equal(
            row_part[r], np.broadcast_to(row_part[r, :1], row_part[r].shape)
        )
    for c in range(grid):
        # ... and tokens in the same column share the column part.
        np.testing.assert_array_equal(
            col_part[:, c],
            np.broadcast_to(col_part[:1, c], col_part[:, c].shape),
        )
    # The row and column encodings are the same function of the index.
    np.testing.assert_allclose(row_part[:, 0], col_part[0, :], atol=1e-7)


def test_sin_cos_structure_and_bounds():
    grid, dim = 4, 16
    _, table = _table(grid, dim)
    table = table[0]
    assert np.all(np.abs(table) <= 1.0)
    quarter = dim // 4
    for half in (0, dim // 2):
        sin = table[:, half : half + quarter]
        cos = table[:, half + quarter : half + 2 * quarter]
        np.testing.assert_allclose(sin**2 + cos**2, 1.0, atol=1e-6)
    # Position (0, 0): every sine is 0 and every cosine is 1.
    expected_origin = np.tile(
        np.concatenate([np.zeros(quarter), np.ones(quarter)]), 2
    )
    np.testing.assert_allclose(table[0], expected_origin, atol=1e-7)
    # All positions are told apart.
    distances = np.linalg.norm(table[:, None] - table[None], axis=-1)
    assert np.all(distances[~np.eye(len(table), dtype=bool)] > 1e-3)


def test_matches_transformer_encoding_of_row_and_column():
    # "Attention is all you need" encoding of each axis with dim / 2
    # channels, frequencies 1 / 10000^(2i / (dim / 2)), sines then cosines.
    grid, dim = 3, 8
    axis_dim = dim // 2
    freqs = 1.0 / 10000.0 ** (np.arange(0, axis_dim, 2) / axis_dim)

    def encode(position):
        return np.concatenate(
            [np.sin(position * freqs), np.cos(position * freqs)]
        )

    expected = np.stack(
        [
            np.concatenate([encode(r), encode(c)])
            for r in range(grid)
            for c in range(grid)
        ]
    )
    np.testing.assert_allclose(
        sincos_position_embedding_2d(grid, dim), expected, atol=1e-12
    )


def test_has_no_weights():
    layer, _ = _table()
    assert layer.weights == []
    assert layer.trainable_weights == []
    assert layer.count_params() == 0


def test_wrong_number_of_tokens_raises():
    layer = SinCosPositionEmbedding2D(4)
    with pytest.raises(ValueError, match="grid_size"):
        layer(np.zeros((1, 9, 16), "float32"))


def test_dim_not_divisible_by_four_raises():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_embedding_2d(4, 18)


def test_config_round_trip():
    layer = SinCosPositionEmbedding2D(4, name="positions")
    tokens = np.random.default_rng(0).normal(size=(2, 16, 16))
    tokens = tokens.astype("float32")
    layer(tokens)
    restored = test_utils.assert_layer_config_round_trip(layer, tokens)
    assert restored.grid_size == 4


def test_symbolic_call():
    layer = SinCosPositionEmbedding2D(2)
    outputs = layer(keras.Input((4, 16)))
    assert tuple(outputs.shape) == (None, 4, 16)
