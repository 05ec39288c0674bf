"""Smoke run of the main job (examples/train_digits.py) on this backend."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

import keras_dsd

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "examples", "train_digits.py"
)


def load_example():
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.backend_independent
def test_embedded_digits_are_real_mnist():
    images, labels = keras_dsd.datasets.load_mnist_digits()
    assert images.shape == (5000, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(np.bincount(labels), np.full(10, 500))
    # Zero padding of 2 pixels around the 28x28 digits, strokes inside.
    assert images[:, :2].max() == 0 and images[:, -2:].max() == 0
    assert images[:, 2:30, 2:30].max() == 255
    # Grayscale repeated to RGB.
    assert np.array_equal(images[..., 0], images[..., 2])


@pytest.mark.large(except_backend="torch")
def test_train_digits_smoke(tmp_path):
    out = tmp_path / "run"
    code = load_example().main(["--smoke", "--output-dir", str(out)])
    assert code == 0
    for name in (
        "dsd_digits.keras",
        "samples.png",
        "samples_unguided.png",
        "reconstructions.png",
        "history.csv",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    for name in ("samples.png", "samples_unguided.png"):
        samples = np.asarray(Image.open(out / name))
        # 10 rows (one per class) of 32x32 digits, upscaled x2, 2 px padding.
        assert samples.shape[0] == (10 * 34 + 2) * 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == keras.backend.backend()
    assert metrics["steps"] == 2 and metrics["guidance_scale"] == 3.0
    for key in (
        "class_accuracy_samples",
        "class_accuracy_samples_unguided",
        "classifier_accuracy_on_held_out_digits",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    for key in (
        "loss",
        "reconstruction_loss",
        "diffusion_loss",
        "latent_std",
        "latent_effective_rank",
    ):
        assert key in header
    model = keras.saving.load_model(out / "dsd_digits.keras")
    again = keras_dsd.models.DSDImageGenerator.from_preset(str(out / "preset"))
    a = model.generate([3, 4], num_steps=2, seed=5)
    b = again.generate([3, 4], num_steps=2, seed=5)
    np.testing.assert_array_equal(a, b)
    metadata = json.loads((out / "preset" / "metadata.json").read_text())
    assert metadata["parameter_count"] == model.backbone.count_params()


@pytest.mark.backend_independent
def test_train_digits_rejects_bad_flags(capsys):
    module = load_example()
    for argv in (
        ["--batch-size", "0"],
        ["--sampler", "ddim"],
        ["--objective", "vae"],
        ["--guidance-scale", "nan"],
        ["--label-dropout", "0"],
        ["--label-dropout", "1.5"],
        ["--classifier-epochs", "-1"],
    ):
        try:
            module.parse_args(argv)
        except SystemExit as exit:
            assert exit.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
    err = capsys.readouterr().err
    assert "--batch-size" in err and "--label-dropout" in err
    # Without label dropout there is no null class to guide with.
    args = module.parse_args(
        ["--label-dropout", "0", "--guidance-scale", "none"]
    )
    assert args.guidance_scale is None
