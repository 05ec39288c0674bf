import json
import os
import types

import keras
import numpy as np
import pytest

from keras_dsd.evaluation import sampling
from keras_dsd.models import DSDBackbone
from keras_dsd.models import DSDImageGenerator

# A 1-block network: enough to check dtypes and weights.
SMALL_BACKBONE = {"num_layers": 1, "hidden_dim": 32, "num_heads": 2}


class FakeGenerator:
    """Stands in for a `DSDImageGenerator`: 4x4 images whose every pixel is
    `10 * label + (seed % 7)`, and a log of the `generate` calls."""

    def __init__(self, num_classes=3, image_size=4):
        network = types.SimpleNamespace(
            image_size=image_size,
            num_classes=num_classes,
            compute_dtype="float32",
        )
        self.backbone = self.inference_backbone = network
        self.calls = []

    def generate(self, labels, seed, **kwargs):
        self.calls.append({"labels": list(labels), "seed": seed, **kwargs})
        size = self.backbone.image_size
        values = 10 * np.asarray(labels) + seed % 7
        return np.broadcast_to(
            values[:, None, None, None], (len(labels), size, size, 3)
        ).astype("uint8")


def test_chunks_resume_without_regenerating_finished_ones(tmp_path):
    model = FakeGenerator(num_classes=3)
    chunk_dir = str(tmp_path / "chunks")
    settings = dict(num_samples=6, chunk_size=4, seed=5, num_steps=2)

    paths, counts = sampling.generate_chunks(model, chunk_dir, **settings)
    # 6 samples in chunks of 4: [0, 4) and [4, 6); sample k has class k % 3.
    assert [os.path.basename(p) for p in paths] == [
        "chunk_00000.npz",
        "chunk_00001.npz",
    ]
    assert counts == {"chunks": 2, "chunks_reused": 0, "chunks_generated": 2}
    assert [c["labels"] for c in model.calls] == [[0, 1, 2, 0], [1, 2]]
    seeds = [c["seed"] for c in model.calls]
    assert len(set(seeds)) == 2
    images, labels = sampling.read_chunk(paths[1])
    np.testing.assert_array_equal(labels, [1, 2])
    assert images.dtype == np.uint8 and images.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(
        images[:, 0, 0, 0], [10 + seeds[1] % 7, 20 + seeds[1] % 7]
    )

    # Lose chunk 1 and leave a temporary file of a killed run: the rerun
    # generates chunk 1 alone, with its own seed, and cleans up.
    mtime = os.stat(paths[0]).st_mtime_ns
    os.remove(paths[1])
    (tmp_path / "chunks" / ".tmp-abc.npz").write_bytes(b"partial")
    model.calls.clear()
    _, counts = sampling.generate_chunks(model, chunk_dir, **settings)
    assert counts == {"chunks": 2, "chunks_reused": 1, "chunks_generated": 1}
    assert [(c["labels"], c["seed"]) for c in model.calls] == [
        ([1, 2], seeds[1])
    ]
    assert os.stat(paths[0]).st_mtime_ns == mtime
    assert sorted(os.listdir(chunk_dir)) == [
        "chunk_00000.npz",
        "chunk_00001.npz",
        "manifest.json",
    ]

    # A truncated chunk is not "finished": it is generated again.
    with open(paths[0], "r+b") as f:
        f.truncate(10)
    model.calls.clear()
    _, counts = sampling.generate_chunks(model, chunk_dir, **settings)
    assert counts["chunks_generated"] == 1
    assert [c["labels"] for c in model.calls] == [[0, 1, 2, 0]]


def test_chunk_dir_of_other_settings_is_refused(tmp_path):
    model = FakeGenerator(num_classes=3)
    chunk_dir = str(tmp_path / "chunks")
    sampling.generate_chunks(
        model, chunk_dir, num_samples=3, seed=0, model_digest="abc"
    )
    manifest = json.loads((tmp_path / "chunks" / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["model_sha256"] == "abc"
    assert manifest["image_shape"] == [4, 4, 3]
    model.calls.clear()
    with pytest.raises(ValueError, match=r"other settings \(different: seed"):
        sampling.generate_chunks(
            model, chunk_dir, num_samples=3, seed=1, model_digest="abc"
        )
    with pytest.raises(ValueError, match="different: model_sha256"):
        sampling.generate_chunks(
            model, chunk_dir, num_samples=3, seed=0, model_digest="def"
        )
    assert model.calls == []
    # The folder's manifest is untouched by the refused runs.
    assert (
        json.loads((tmp_path / "chunks" / "manifest.json").read_text())
        == manifest
    )


def test_zero_or_uneven_sample_counts_are_refused_up_front(tmp_path):
    model = FakeGenerator(num_classes=3)
    for kwargs, message in (
        ({"num_samples": 0}, "num_samples=0"),
        ({"num_samples": 4}, "num_samples=4 is not a multiple of the 3"),
        ({"num_samples": 4, "num_classes": 4}, "num_classes=4 exceeds"),
        ({"num_samples": 3, "num_classes": 0}, "num_classes=0"),
    ):
        with pytest.raises(ValueError, match=message):
            sampling.generate_samples(model, str(tmp_path / "out"), **kwargs)
    assert model.calls == [] and not (tmp_path / "out").exists()
    assert sampling.check_sample_counts(model, 4, num_classes=2) == 2
    with pytest.raises(ValueError, match="num_samples=0"):
        sampling.write_samples_npz(str(tmp_path / "s.npz"), [], 0, (4, 4, 3))


def test_generate_samples_exports_the_adm_npz(tmp_path):
    model = FakeGenerator(num_classes=2)
    record, chunk_paths = sampling.generate_samples(
        model,
        str(tmp_path),
        num_samples=4,
        chunk_size=3,
        sampler="euler",
        num_steps=3,
        guidance_scale=2.0,
        verbose=False,
    )
    path = tmp_path / "samples_4x4x4x3.npz"
    assert record["samples"] == str(path)
    assert record["samples_per_class"] == 2 and record["num_classes"] == 2
    # Euler: one evaluation per step, doubled by guidance.
    assert record["nfe"] == 6 and record["chunks"] == 2
    with np.load(path) as data:
        assert sorted(data.files) == ["arr_0", "arr_1"]
        images, labels = data["arr_0"], data["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (4, 4, 4, 3)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [0, 1, 0, 1])
    seeds = [c["seed"] % 7 for c in model.calls for _ in c["labels"]]
    np.testing.assert_array_equal(
        images[:, 2, 1, 0], 10 * np.array([0, 1, 0, 1]) + seeds
    )
    assert [batch.shape[0] for batch in sampling.iter_samples(chunk_paths)] == [
        3,
        1,
    ]


def test_export_killed_midway_leaves_no_file(tmp_path, monkeypatch):
    model = FakeGenerator(num_classes=2)
    chunk_paths, _ = sampling.generate_chunks(
        model, str(tmp_path / "chunks"), num_samples=4, chunk_size=2
    )
    path = tmp_path / "samples.npz"
    read_chunk = sampling.read_chunk
    calls = []

    def failing_read_chunk(chunk):
        calls.append(chunk)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while exporting")
        return read_chunk(chunk)

    monkeypatch.setattr(sampling, "read_chunk", failing_read_chunk)
    with pytest.raises(KeyboardInterrupt):
        sampling.write_samples_npz(str(path), chunk_paths, 4, (4, 4, 3))
    assert os.listdir(tmp_path) == ["chunks"]
    monkeypatch.undo()
    # Chunks that do not hold the announced samples: refused, no file.
    with pytest.raises(ValueError, match="hold 4 samples, expected 6"):
        sampling.write_samples_npz(str(path), chunk_paths, 6, (4, 4, 3))
    assert os.listdir(tmp_path) == ["chunks"]


def test_as_float32_copies_a_mixed_precision_model_exactly():
    backbone = DSDBackbone.from_preset(
        "dsd_tiny", dtype="mixed_bfloat16", **SMALL_BACKBONE
    )
    model = DSDImageGenerator(backbone=backbone)
    converted = sampling.as_float32(model)
    assert converted.backbone.dtype_policy.name == "float32"
    assert converted.inference_backbone.dtype_policy.name == "float32"
    for a, b in zip(converted.weights, model.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )
    assert sampling.as_float32(converted) is converted


def test_load_generator_errors(tmp_path):
    with pytest.raises(ValueError, match="'dsd_tiny' is neither.*save_to_"):
        sampling.load_generator("dsd_tiny")
    other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    other.save(tmp_path / "other.keras")
    with pytest.raises(ValueError, match="holds a Sequential, not a"):
        sampling.load_generator(str(tmp_path / "other.keras"))
