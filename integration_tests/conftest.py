"""Fixtures shared by the integration tests."""

import importlib.util
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _load(directory, name):
    """The module `<directory>/<name>.py`, loaded by path."""
    path = os.path.join(directory, f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def load_example():
    """`load_example(name)` -> the module `examples/<name>.py`."""
    return lambda name: _load(EXAMPLES, name)


@pytest.fixture(scope="module")
def load_benchmark():
    """`load_benchmark(name)` -> the module `benchmarks/<name>.py`, with
    `benchmarks/` on `sys.path` (the scripts import `machine.py` and each
    other) while the test module runs."""
    sys.path.insert(0, BENCHMARKS)

    try:
        yield lambda name: _load(BENCHMARKS, name)
    finally:
        sys.path.remove(BENCHMARKS)
