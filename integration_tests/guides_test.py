"""The guides in guides/ run top to bottom, in fast mode, on this backend.

Each guide runs as a script in its own process (`KERAS_DSD_GUIDE_FAST=1`,
the backend of this pytest run), as a reader would run it, and writes its
outputs into a temporary folder.
"""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

GUIDES = os.path.join(os.path.dirname(__file__), "..", "guides")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_guide(name, output_dir):
    env = {
        **os.environ,
        "KERAS_BACKEND": keras.backend.backend(),
        "KERAS_DSD_GUIDE_FAST": "1",
        "KERAS_DSD_GUIDE_OUTPUT_DIR": str(output_dir),
    }
    result = subprocess.run(
        [sys.executable, os.path.join(GUIDES, f"{name}.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"guides/{name}.py exited with {result.returncode}:\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def read_png(path):
    """The image at `path` as a numpy array, after checking it is a PNG."""
    assert path.is_file(), path
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def grid_shape(rows, cols, size=32, padding=2, scale=2):
    """Height and width of a `save_image_grid` PNG of `size` px images."""
    return (
        (rows * (size + padding) + padding) * scale,
        (cols * (size + padding) + padding) * scale,
    )


# 20 s even on PyTorch: the full tier runs every guide.
@pytest.mark.large
def test_getting_started_guide(tmp_path):
    stdout = run_guide("getting_started", tmp_path)
    out = tmp_path / "getting_started"
    assert read_png(out / "digits.png").shape[:2] == grid_shape(1, 10)
    # Fast mode: 2 samples per class, one row per class.
    assert read_png(out / "samples.png").shape[:2] == grid_shape(10, 2)
    recon = read_png(out / "reconstructions.png")
    assert recon.shape[:2] == grid_shape(4, 10)
    assert recon.std() > 0
    assert (out / "dsd_digits.keras").is_file()
    for name in ("config.json", "metadata.json", "task.json"):
        assert (out / "preset" / name).is_file(), name
    assert "load_model: same samples as the trained model: True" in stdout
    assert "from_preset: same samples as the trained model: True" in stdout
    assert "pixel values differ, by at most" in stdout


@pytest.mark.large
def test_latent_collapse_guide(tmp_path):
    stdout = run_guide("latent_collapse", tmp_path)
    out = tmp_path / "latent_collapse"
    curves = read_png(out / "latent_curves.png")
    assert curves.shape[1] > curves.shape[0] > 100  # two panels side by side
    recon = read_png(out / "reconstructions.png")
    assert recon.shape[:2] == grid_shape(4, 10)  # real + 3 objectives
    for mode in ("naive", "decoupled", "dsd"):
        # Fast mode: 1 sample per class, one row per class.
        samples = read_png(out / f"samples_{mode}.png")
        assert samples.shape[:2] == grid_shape(10, 1), mode
        assert f"| {mode} | 4 |" in stdout, mode
    assert "largest relative difference" in stdout


@pytest.mark.large
def test_training_on_imagenet_guide(tmp_path):
    stdout = run_guide("training_on_imagenet", tmp_path)
    out = tmp_path / "training_on_imagenet"
    assert "resumed batch == straight batch 3: True" in stdout
    assert "shard union == global batch 0 (labels): True" in stdout
    # Killed right after its first checkpoint (a loop is 2 steps here).
    assert re.search(r"killed after \d+ steps", stdout)
    assert re.search(r"Resuming after loop \d+ \(step \d+\)", stdout)
    run = out / f"run_{keras.backend.backend()}"
    assert (run / "preset" / "task.weights.h5").is_file()
    for name in ("loop_00002.png", "loop_00003.png"):
        assert read_png(run / "samples" / name).std() > 0
    assert "FD-EffNetLite0:" in stdout


@pytest.mark.large
def test_editing_digits_guide(tmp_path):
    stdout = run_guide("editing_digits", tmp_path)
    out = tmp_path / "editing_digits"
    # One held-out digit per class: the digits above 3 strengths, the
    # digits above their class swap, and digits / masked / completed.
    strengths = read_png(out / "strengths.png")
    assert strengths.shape[:2] == grid_shape(4, 10)
    assert read_png(out / "class_swap.png").shape[:2] == grid_shape(2, 10)
    assert read_png(out / "inpainting.png").shape[:2] == grid_shape(3, 10)
    for name in ("interpolation.png", "interpolation_denoised.png"):
        assert read_png(out / name).shape[:2] == grid_shape(4, 8), name
    assert "pixels outside the mask unchanged: True" in stdout
    assert re.search(r"linear probe on the mean-pooled latents: \d+%", stdout)
