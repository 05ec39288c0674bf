"""pytest setup shared by every test of keras_dsd.

The backend is chosen per process by `KERAS_BACKEND` (one backend per
pytest run). Tests marked `large` are skipped unless `--run-large` is given.
"""

import keras
import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--run-large",
        action="store_true",
        default=False,
        help="Also run the slow tests marked `large`.",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "large: slow tests, run with --run-large"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-large"):
        return
    skip_large = pytest.mark.skip(reason="large test: pass --run-large")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip_large)


@pytest.fixture(autouse=True)
def random_seed():
    """Every test starts from the same Keras, numpy and Python seeds."""
    keras.utils.set_random_seed(0)
    yield
