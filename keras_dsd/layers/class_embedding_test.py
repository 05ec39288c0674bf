import numpy as np
import pytest

from keras_dsd.layers.class_embedding import ClassEmbedding
from keras_dsd.layers.class_embedding import RoleEmbedding
from keras_dsd.testing import test_utils


def _class_embedding():
    layer = ClassEmbedding(num_classes=3, hidden_dim=16)
    layer(np.array([0]))
    return layer


def test_class_table_has_a_null_row():
    layer = _class_embedding()
    assert layer.null_class == 3
    assert tuple(layer.embeddings.shape) == (4, 16)
    table = test_utils.to_numpy(layer.embeddings)
    outputs = test_utils.to_numpy(layer(np.array([2, 0, 3, 1])))
    assert outputs.shape == (4, 16)
    np.testing.assert_array_equal(outputs, table[[2, 0, 3, 1]])
    # The null class is a row of its own, distinct from every real class.
    for label in range(3):
        assert not np.allclose(outputs[2], table[label])


def test_class_labels_of_any_int_or_float_dtype():
    layer = _class_embedding()
    expected = test_utils.to_numpy(layer(np.array([1, 2], "int32")))
    for dtype in ("int64", "float32"):
        actual = test_utils.to_numpy(layer(np.array([1, 2], dtype)))
        np.testing.assert_array_equal(actual, expected)


def test_class_label_beyond_null_row_is_not_a_class():
    # Past the null row there is no class: the backend either raises or
    # returns something that is none of the table's rows (JAX fills NaN).
    # The user-facing API rejects such labels before they get here (see
    # dsd_image_generator_test.py).
    layer = _class_embedding()
    table = test_utils.to_numpy(layer.embeddings)
    try:
        outputs = test_utils.to_numpy(layer(np.array([4])))
    except Exception:  # noqa: BLE001 (backend-specific error types)
        return
    for row in table:
        assert not np.allclose(outputs[0], row)


def test_class_embedding_config_round_trip():
    layer = _class_embedding()
    labels = np.array([0, 3, 1])
    restored = test_utils.assert_layer_config_round_trip(layer, labels)
    assert restored.num_classes == 3 and restored.null_class == 3
    assert layer.compute_output_shape((5,)) == (5, 16)


def test_role_embedding_broadcasts_one_vector_per_role():
    layer = RoleEmbedding(hidden_dim=16)
    tokens = np.zeros((5, 4, 16), "float32")
    outputs = [test_utils.to_numpy(layer(tokens, role=r)) for r in range(3)]
    table = test_utils.to_numpy(layer.embeddings)
    assert table.shape == (3, 16)
    for role, output in enumerate(outputs):
        assert output.shape == (5, 16)
        np.testing.assert_array_equal(
            output, np.broadcast_to(table[role], (5, 16))
        )
    assert not np.allclose(outputs[0], outputs[1])
    assert not np.allclose(outputs[1], outputs[2])
    assert layer.compute_output_shape((5, 4, 16)) == (5, 16)


@pytest.mark.parametrize("role", [-1, 3])
def test_role_out_of_range_raises(role):
    layer = RoleEmbedding(hidden_dim=16)
    with pytest.raises(ValueError, match="role"):
        layer(np.zeros((2, 4, 16), "float32"), role=role)


def test_role_embedding_config_round_trip():
    layer = RoleEmbedding(hidden_dim=16, num_roles=4, name="roles")
    tokens = np.zeros((2, 4, 16), "float32")
    layer(tokens, role=3)
    restored = test_utils.assert_layer_config_round_trip(layer, tokens, role=3)
    assert restored.num_roles == 4
