"""Smoke run of the probe table (examples/linear_probe.py)."""

import json

import pytest


@pytest.mark.large
def test_linear_probe_smoke(tmp_path, load_example):
    load_example("linear_probe").main(
        ["--smoke", "--output-dir", str(tmp_path)]
    )
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


def test_bad_steps(load_example):
    with pytest.raises(SystemExit):
        load_example("linear_probe").parse_args(["--steps", "0"])
