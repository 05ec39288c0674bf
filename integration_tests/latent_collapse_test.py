"""Smoke run of the collapse study (examples/latent_collapse.py)."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "examples", "latent_collapse.py"
)
MODES = ("naive", "decoupled", "dsd")


def load_example():
    spec = importlib.util.spec_from_file_location("latent_collapse", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(markdown):
    """`{first cell: [other cells]}` of the Markdown table's body rows."""
    rows = {}
    for line in markdown.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.large(except_backend="torch")
def test_latent_collapse_smoke(tmp_path):
    out = tmp_path / "study"
    assert load_example().main(["--smoke", "--output-dir", str(out)]) == 0
    for name in (
        "results.md",
        "results.json",
        "latent_collapse.png",
        *(f"samples_{mode}.png" for mode in MODES),
    ):
        assert (out / name).is_file(), name
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]

    # The table: one row per mode, all numbers finite.
    rows = table_rows((out / "results.md").read_text())
    assert "mode" in rows
    for mode in MODES:
        assert mode in rows, mode
        values = [float(cell) for cell in rows[mode]]
        assert len(values) == 8 and all(map(math.isfinite, values)), rows
        steps, rank, min_rank = values[0], values[2], values[3]
        assert steps == 3 and 1.0 <= min_rank <= rank + 1e-6
        assert 0.0 <= values[7] <= 1.0  # class accuracy
    assert (
        "trained by this script on the held-out digits"
        in (out / "results.md").read_text()
    )

    # The JSON: per-step curves of every mode.
    summary = json.loads((out / "results.json").read_text())
    assert summary["num_train"] + summary["num_heldout"] == 5000
    channels = summary["latent_channels"]
    for mode in MODES:
        curves = summary["modes"][mode]["curves"]
        assert curves["step"] == [1, 2, 3]
        for key in ("latent_effective_rank", "latent_std"):
            assert len(curves[key]) == 3
            assert all(math.isfinite(v) for v in curves[key])
        assert all(
            1.0 - 1e-3 <= r <= channels + 1e-3
            for r in curves["latent_effective_rank"]
        )

    # A two-panel plot and 10-row grids (32 px digits, x2, 2 px padding).
    plot = np.asarray(Image.open(out / "latent_collapse.png"))
    assert plot.shape[1] > plot.shape[0] > 100
    grid = np.asarray(Image.open(out / "samples_dsd.png"))
    assert grid.shape[:2] == ((10 * 34 + 2) * 2, (2 * 34 + 2) * 2)


@pytest.mark.backend_independent
def test_curve_recorder_recovers_per_step_values():
    module = load_example()
    recorder = module.CurveRecorder(max_steps=5)

    class FakeModel:
        stop_training = False

    recorder.set_model(FakeModel())
    recorder.on_train_begin()
    values = [[4.0, 2.0, 6.0], [3.0, 5.0]]  # two epochs
    for epoch in values:
        for batch, value in enumerate(epoch):
            mean = float(np.mean(epoch[: batch + 1]))
            recorder.on_train_batch_end(
                batch, {"latent_effective_rank": mean, "latent_std": mean}
            )
    np.testing.assert_allclose(
        recorder.curves["latent_effective_rank"], sum(values, [])
    )
    assert recorder.steps == 5 and recorder.model.stop_training


@pytest.mark.backend_independent
def test_latent_collapse_rejects_bad_flags(capsys):
    module = load_example()
    for argv, flag in (
        (["--modes", "naive,vae"], "--modes"),
        (["--steps", "0"], "--steps"),
        (["--heldout-per-class", "500"], "--heldout-per-class"),
    ):
        with pytest.raises(SystemExit) as exit:
            module.parse_args(argv)
        assert exit.value.code == 2
        assert flag in capsys.readouterr().err
    args = module.parse_args(["--modes", "dsd, naive"])
    assert args.modes == ["dsd", "naive"] and args.minutes_per_mode == 4.5
