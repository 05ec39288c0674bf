"""Fixtures shared by the integration tests."""

import importlib.util
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


@pytest.fixture(scope="module")
def load_benchmark():
    """`load_benchmark(name)` -> the module `benchmarks/<name>.py`, with
    `benchmarks/` on `sys.path` (the scripts import `machine.py` and each
    other) while the test module runs."""
    sys.path.insert(0, BENCHMARKS)

    def load(name):
        path = os.path.join(BENCHMARKS, f"{name}.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    try:
        yield load
    finally:
        sys.path.remove(BENCHMARKS)
