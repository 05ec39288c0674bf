import hashlib
import json

import numpy as np
import pytest

from keras_dsd.evaluation import files

# No Keras call: run with one backend (conftest.py).
pytestmark = pytest.mark.backend_independent


def test_save_npz_keeps_the_name_and_headers_match(tmp_path):
    path = tmp_path / "samples"  # no .npz suffix: np.savez would add one
    files.save_npz(
        str(path),
        images=np.zeros((3, 4, 5, 3), "uint8"),
        labels=np.arange(3, dtype="int64"),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]
    assert files.npz_headers(str(path)) == {
        "images": ((3, 4, 5, 3), np.dtype("uint8")),
        "labels": ((3,), np.dtype("int64")),
    }


def test_write_json_converts_numpy_values(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json(
        str(path),
        {"fd": np.float64(1.5), "n": np.int64(3), "shape": np.array([2, 3])},
    )
    assert json.loads(path.read_text()) == {"fd": 1.5, "n": 3, "shape": [2, 3]}


def test_file_digest(tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"weights")
    expected = hashlib.sha256(b"model.keras" + b"weights").hexdigest()
    assert files.file_digest(str(model)) == expected

    preset = tmp_path / "preset"
    preset.mkdir()
    (preset / "config.json").write_text("{}")
    (preset / "model.weights.h5").write_bytes(b"w1")
    (preset / "metadata.json").write_text('{"date": 1}')
    first = files.file_digest(str(preset))
    (preset / "metadata.json").write_text('{"date": 2}')
    assert files.file_digest(str(preset)) == first  # the save date
    (preset / "model.weights.h5").write_bytes(b"w2")
    assert files.file_digest(str(preset)) != first  # the weights
