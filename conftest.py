"""pytest setup shared by every test of keras_dsd.

The backend is chosen per process by `KERAS_BACKEND` (one backend per
pytest run). Two markers sort the tests (docs/tests.md):

- `large`: slow tests (end-to-end runs whose path a faster test also
  covers), skipped unless `--run-large` is given (`scripts/test.sh --all`).
  `@pytest.mark.large(except_backend="torch")` keeps the test in the fast
  tier on that one backend; `@pytest.mark.large(only_backend="jax")` makes
  it large on that backend alone.
- `backend_independent`: tests whose outcome no backend changes (argument
  parsing, file bookkeeping, metric arithmetic on numpy, the repository's
  layout, `tf.data` pipelines).
  `--skip-backend-independent` deselects them: `scripts/test.sh` runs them
  with the first backend only.

On JAX, every test of one run shares a compilation cache in a temporary
folder (subprocesses included, through `JAX_COMPILATION_CACHE_DIR`):
tests that build the same small models compile the same programs, eager
ones op by op. The folder is removed when the run ends, so no run reads
another's compilations.

`--durations-file PATH` writes every test's duration (set-up, call and
tear-down together), slowest first, to `PATH`.
"""

import os
import shutil
import tempfile

import keras
import pytest

_DURATIONS = {}  # test id -> (seconds, outcome), for --durations-file


def pytest_addoption(parser):
    parser.addoption(
        "--run-large",
        action="store_true",
        default=False,
        help="Also run the slow tests marked `large`.",
    )
    parser.addoption(
        "--skip-backend-independent",
        action="store_true",
        default=False,
        help="Deselect the tests marked `backend_independent` (run them "
        "with one backend only).",
    )
    parser.addoption(
        "--durations-file",
        default=None,
        metavar="PATH",
        help="Write every test's duration in seconds, slowest first, to PATH.",
    )


def pytest_configure(config):
    # The markers themselves are declared in pyproject.toml.
    config._keras_dsd_jax_cache = None
    if keras.backend.backend() == "jax" and not os.environ.get(
        "JAX_COMPILATION_CACHE_DIR"
    ):
        config._keras_dsd_jax_cache = _share_jax_compilations()


def _share_jax_compilations():
    import jax

    directory = tempfile.mkdtemp(prefix="keras_dsd_jax_cache_")
    settings = {
        "jax_compilation_cache_dir": directory,
        # Cache every program, the many small eager ones too.
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)
    return directory


def pytest_collection_modifyitems(config, items):
    if config.getoption("--skip-backend-independent"):
        kept = []
        deselected = []
        for item in items:
            if "backend_independent" in item.keywords:
                deselected.append(item)
            else:
                kept.append(item)
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = kept
    if config.getoption("--run-large"):
        return
    skip_large = pytest.mark.skip(reason="large test: pass --run-large")
    backend = keras.backend.backend()
    for item in items:
        marker = item.get_closest_marker("large")
        if marker is None:
            continue
        only = marker.kwargs.get("only_backend", backend)
        if only == backend and marker.kwargs.get("except_backend") != backend:
            item.add_marker(skip_large)


def pytest_runtest_logreport(report):
    # With pytest-xdist this runs where the reports are gathered, so the
    # file holds the tests of every worker.
    seconds, result = _DURATIONS.get(report.nodeid, (0.0, "passed"))
    if report.when == "call" or report.outcome != "passed":
        result = report.outcome if result == "passed" else result
    _DURATIONS[report.nodeid] = (seconds + report.duration, result)


def pytest_unconfigure(config):
    directory = getattr(config, "_keras_dsd_jax_cache", None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


def pytest_sessionfinish(session):
    path = session.config.getoption("--durations-file")
    if not path or hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: its reports went to the main process
    rows = sorted(_DURATIONS.items(), key=lambda row: -row[1][0])
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        f.write(
            f"# KERAS_BACKEND={keras.backend.backend()}: seconds per test "
            f"(set-up + call + tear-down), slowest first; "
            f"{len(rows)} tests, {sum(r[1][0] for r in rows):.1f} s\n"
        )
        for nodeid, (seconds, result) in rows:
            f.write(f"{seconds:9.2f}  {result:7}  {nodeid}\n")


@pytest.fixture(autouse=True)
def random_seed():
    """Every test starts from the same Keras, numpy and Python seeds."""
    keras.utils.set_random_seed(0)
    yield
