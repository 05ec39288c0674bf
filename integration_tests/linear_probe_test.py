"""Smoke run of the probe table (examples/linear_probe.py)."""

import importlib.util
import json
import os

import pytest

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "examples", "linear_probe.py"
)


def load_example():
    spec = importlib.util.spec_from_file_location("linear_probe", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.large
def test_linear_probe_smoke(tmp_path):
    load_example().main(["--smoke", "--output-dir", str(tmp_path)])
    with open(tmp_path / "probe.json") as f:
        results = json.load(f)
    accuracy = results["accuracy"]
    assert set(accuracy) == {"pixels", "untrained", "naive", "decoupled", "dsd"}
    assert results["steps"] == 2 and results["seeds"] == [0]
    # The pixel probe separates the digits well above chance (10 %) even on
    # the smoke run's 204 training digits.
    assert accuracy["pixels"]["flatten"][0] > 0.5
    for name in ("untrained", "naive", "decoupled", "dsd"):
        for pooling in ("mean", "flatten"):
            assert 0.0 <= accuracy[name][pooling][0] <= 1.0, (name, pooling)
    table = (tmp_path / "probe.md").read_text()
    assert "| dsd | 2 |" in table and "| pixels | - | - |" in table


def test_bad_steps():
    with pytest.raises(SystemExit):
        load_example().parse_args(["--steps", "0"])
