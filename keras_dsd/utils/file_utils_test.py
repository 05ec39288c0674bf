import json
import os

import numpy as np
import pytest

from keras_dsd.utils import file_utils


def test_write_json_round_trip_and_newline(tmp_path):
    path = tmp_path / "sub" / "state.json"
    assert file_utils.write_json(str(path), {"a": [1, 2.5], "b": None})
    text = path.read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == {"a": [1, 2.5], "b": None}
    assert os.listdir(path.parent) == ["state.json"]  # no temp file left


def test_write_json_default_serialises_other_objects(tmp_path):
    path = tmp_path / "metrics.json"
    file_utils.write_json(str(path), {"x": np.float32(0.5)}, default=float)
    assert json.loads(path.read_text()) == {"x": 0.5}


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    file_utils.write_json(str(path), {"step": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        file_utils.write_json(str(path), {"step": object()})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["state.json"]


def test_save_model_round_trip_and_crash_keeps_the_old_file(tmp_path):
    import keras

    path = str(tmp_path / "models" / "m.keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    file_utils.save_model(model, path)
    restored = keras.saving.load_model(path)
    x = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    before = open(path, "rb").read()

    class Broken:
        def save(self, filepath):
            with open(filepath, "wb") as f:
                f.write(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        file_utils.save_model(Broken(), path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path / "models") == ["m.keras"]
