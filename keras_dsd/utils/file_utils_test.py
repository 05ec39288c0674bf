import json
import os

import numpy as np
import pytest

from keras_dsd.utils import file_utils
from keras_dsd.utils import image_grid


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


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=oct)
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_written_files_follow_the_umask(tmp_path, umask):
    # As `open` would create them: 0o666 without the umask's bits.
    expected = 0o666 & ~umask
    json_path = file_utils.write_json(str(tmp_path / "metrics.json"), {})
    png_path = image_grid.save_image_grid(
        np.zeros((2, 4, 4, 3), "uint8"), str(tmp_path / "grid.png"), rows=1
    )
    for path in (json_path, png_path):
        assert os.stat(path).st_mode & 0o777 == expected, oct(expected)


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
