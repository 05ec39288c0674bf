"""Smoke runs of examples/evaluate.py on this backend."""

import importlib.util
import json
import math
import os

import keras
import numpy as np
import pytest
from PIL import Image

import keras_dsd
from keras_dsd.metrics import feature_extractors

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "examples", "evaluate.py"
)
# A 1-block network: the pipeline is under test, not the model.
SMALL_BACKBONE = {"num_layers": 1, "hidden_dim": 32, "num_heads": 2}


def load_example():
    spec = importlib.util.spec_from_file_location("evaluate", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def effnet_weights_available():
    try:
        path = feature_extractors.efficientnet_lite0_weights_file()
    except ValueError:
        return False
    return os.path.isfile(path)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(1)
    backbone = keras_dsd.models.DSDBackbone.from_preset(
        "dsd_tiny", **SMALL_BACKBONE
    )
    model = keras_dsd.models.DSDImageGenerator(backbone=backbone, seed=0)
    model.save(folder / "model.keras")
    model.save_to_preset(folder / "preset")
    return folder


@pytest.fixture(scope="module")
def reference_digits():
    images, labels = keras_dsd.datasets.load_mnist_digits()
    index = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(10)])
    return images[index]


def output_npzs(folder):
    return sorted(
        name
        for name in os.listdir(folder)
        if name.endswith(".npz") or name.startswith(".tmp-")
    )


@pytest.mark.large(except_backend="torch")
def test_evaluate_smoke_resume_and_atomic_export(
    tmp_path, saved_model, reference_digits, monkeypatch
):
    module = load_example()
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    for i, image in enumerate(reference_digits):
        Image.fromarray(image).save(reference_dir / f"{i:03d}.png")
    out = tmp_path / "eval"
    stats = tmp_path / "reference_stats.npz"
    model_path = str(saved_model / "model.keras")
    base = ["--model", model_path, "--smoke", "--output-dir", str(out)]

    # 1. Generate, export, score against a folder, write the statistics.
    assert (
        module.main(
            base
            + [
                "--reference",
                str(reference_dir),
                "--metrics",
                "fd-effnet,precision-recall",
                "--write-reference-stats",
                str(stats),
            ]
        )
        == 0
    )
    samples_path = out / "samples_20x32x32x3.npz"
    with np.load(samples_path) as data:
        assert sorted(data.files) == ["arr_0", "arr_1"]
        samples, labels = data["arr_0"], data["arr_1"]
    assert samples.dtype == np.uint8 and samples.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 2))
    chunk0, chunk1 = (
        out / "chunks" / "chunk_00000.npz",
        (out / "chunks" / "chunk_00001.npz"),
    )
    assert chunk0.is_file() and chunk1.is_file()
    first = json.loads((out / "metrics.json").read_text())
    assert first["chunks"] == 2 and first["chunks_generated"] == 2
    assert first["samples_per_class"] == 2 and first["precision"] == "float32"
    if effnet_weights_available():
        fd = first["metrics"]["FD-EffNetLite0"]
        assert math.isfinite(fd) and fd > 0
        assert "NOT comparable with FID" in first["notes"]["FD-EffNetLite0"]
        assert 0 <= first["metrics"]["precision"] <= 1
        assert 0 <= first["metrics"]["recall"] <= 1
        with np.load(stats) as data:
            assert data["mu_EffNetLite0"].shape == (1280,)
            assert data["sigma_EffNetLite0"].shape == (1280, 1280)
            assert str(data["feature_extractor"]) == "EffNetLite0"
    else:
        assert "skipped" in first["notes"]["FD-EffNetLite0"]

    # 2. Lose a chunk and the export: the rerun regenerates only that
    # chunk, identically, and scores against the written statistics.
    mtime = chunk0.stat().st_mtime_ns
    chunk1.unlink()
    samples_path.unlink()
    rerun = ["--metrics", "none"]
    if effnet_weights_available():
        rerun = ["--reference", str(stats), "--metrics", "fd-effnet"]
    assert module.main(base + rerun) == 0
    second = json.loads((out / "metrics.json").read_text())
    assert second["chunks_reused"] == 1 and second["chunks_generated"] == 1
    assert chunk0.stat().st_mtime_ns == mtime
    with np.load(samples_path) as data:
        np.testing.assert_array_equal(data["arr_0"], samples)
        np.testing.assert_array_equal(data["arr_1"], labels)
    if effnet_weights_available():
        assert second["metrics"]["FD-EffNetLite0"] == pytest.approx(
            first["metrics"]["FD-EffNetLite0"], rel=1e-6
        )

    # 3. A run killed while exporting leaves no file under the final name.
    samples_path.unlink()
    calls = []

    def failing_read_chunk(path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while exporting")
        with np.load(path) as data:
            return data["images"], data["labels"]

    monkeypatch.setattr(
        keras_dsd.evaluation.sampling, "read_chunk", failing_read_chunk
    )
    with pytest.raises(KeyboardInterrupt):
        module.main(base + ["--metrics", "none"])
    assert output_npzs(out) == []
    assert json.loads((out / "metrics.json").read_text()) == second

    # 4. Other settings in the same folder are refused, not mixed.
    with pytest.raises(ValueError, match="other settings"):
        module.main(base + ["--metrics", "none", "--seed", "1"])


def test_bad_reference_layouts_fail_early(tmp_path, saved_model):
    module = load_example()
    out = tmp_path / "eval"
    digits = np.zeros((4, 32, 32, 3), "uint8")
    cases = {
        "float": ({"arr_0": digits.astype("float32")}, "dtype float32"),
        "nchw": ({"arr_0": digits.transpose(0, 3, 1, 2)}, "NCHW"),
        "gray": ({"arr_0": digits[..., :1]}, "Grayscale"),
        "rank": ({"arr_0": digits[0]}, "rank 3"),
        "keys": ({"images": digits}, "neither images"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=message):
            module.main(
                [
                    "--model",
                    str(saved_model / "model.keras"),
                    "--smoke",
                    "--output-dir",
                    str(out),
                    "--reference",
                    str(path),
                ]
            )
        assert not (out / "chunks").exists()
        assert output_npzs(out) == []
    (tmp_path / "not_npz.npz").write_text("hello")
    with pytest.raises(ValueError, match="not an .npz"):
        module.main(
            [
                "--model",
                str(saved_model / "model.keras"),
                "--output-dir",
                str(out),
                "--reference",
                str(tmp_path / "not_npz.npz"),
            ]
        )
    assert output_npzs(out) == []


def test_evaluate_preset_folder(tmp_path, saved_model):
    out = tmp_path / "eval"
    assert (
        load_example().main(
            [
                "--preset",
                str(saved_model / "preset"),
                "--smoke",
                "--metrics",
                "none",
                "--output-dir",
                str(out),
                "--sampler",
                "euler",
            ]
        )
        == 0
    )
    with np.load(out / "samples_20x32x32x3.npz") as data:
        assert data["arr_0"].shape == (20, 32, 32, 3)
        assert data["arr_0"].dtype == np.uint8
    result = json.loads((out / "metrics.json").read_text())
    assert result["nfe"] == 2 and result["sampler"] == "euler"


def test_evaluate_flag_errors(capsys, tmp_path, saved_model):
    module = load_example()
    model = str(saved_model / "model.keras")
    for argv, message in (
        (
            ["--model", model, "--reference", "r.npz", "--metrics", "fid"],
            "--inception-weights",
        ),
        (["--model", model, "--metrics", "is"], "--inception-weights"),
        (["--model", model, "--metrics", "fd-effnet"], "--reference"),
        (["--model", model, "--metrics", "kid"], "unknown metric"),
        (["--model", model, "--preset", "p"], "not both"),
        (["--metrics", "none"], "--model or --preset"),
        (["--model", model, "--num-samples", "0"], "--num-samples"),
    ):
        with pytest.raises(SystemExit) as exit:
            module.parse_args(argv)
        assert exit.value.code == 2
        assert message in capsys.readouterr().err, argv
    with pytest.raises(ValueError, match="not a multiple"):
        module.main(
            [
                "--model",
                model,
                "--num-samples",
                "15",
                "--output-dir",
                str(tmp_path / "e"),
            ]
        )
    with pytest.raises(ValueError, match="save_to_preset"):
        module.main(
            ["--preset", "dsd_tiny", "--output-dir", str(tmp_path / "e")]
        )


@pytest.mark.large
def test_evaluate_fid_and_is_with_random_inception(tmp_path, saved_model):
    images, _ = keras_dsd.datasets.load_mnist_digits()
    reference = tmp_path / "reference.npz"
    np.savez(reference, arr_0=images[:20])
    out = tmp_path / "eval"
    assert (
        load_example().main(
            [
                "--model",
                str(saved_model / "model.keras"),
                "--smoke",
                "--output-dir",
                str(out),
                "--reference",
                str(reference),
                "--metrics",
                "fid,is",
                "--inception-weights",
                "random",
            ]
        )
        == 0
    )
    result = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(result["metrics"]["FID"])
    # exp(mean KL) >= 1; a random network's near-uniform predictions put
    # it at 1 up to rounding (0.9999999999999982 seen on TensorFlow).
    assert result["metrics"]["IS"] >= 1.0 - 1e-9
    assert "means nothing" in result["notes"]["FID"]
