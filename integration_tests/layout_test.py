"""The layout rules of the code base, checked on the source.

- Backend frameworks (TensorFlow, JAX, PyTorch) are imported only in
  `keras_dsd/backend/` and in the tf.data pipeline modules.
- Imports inside the package run one way: backend/utils ->
  layers/optimizers/samplers -> models ->
  metrics/callbacks/evaluation/recipes/... -> the top level.
- Every script, guide and benchmark that trains on the digits builds its
  model from the library's `digits` recipe instead of a copy of it.
"""

import ast
import pathlib

import pytest

# No Keras call: run with one backend (conftest.py).
pytestmark = pytest.mark.backend_independent

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_dsd"
FRAMEWORKS = {"tensorflow", "tensorflow_datasets", "jax", "jaxlib", "torch"}
# tf.data pipelines run on TensorFlow whatever the Keras backend is.
DATA_PIPELINE = {
    "keras_dsd/datasets/image_folder.py",
    "keras_dsd/datasets/imagenet.py",
}
# Lower numbers may not import higher ones.
LEVELS = {
    "version": 0,
    "backend": 1,
    "utils": 1,
    "layers": 2,
    "optimizers": 2,
    "samplers": 2,
    "models": 3,
    "metrics": 4,
    "callbacks": 4,
    "datasets": 4,
    "recipes": 5,
    "evaluation": 5,
    "testing": 6,
}


def _imports(path):
    """Every module name that `path` imports, at any depth."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def _library_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if not path.name.endswith("_test.py"):
            yield path.relative_to(ROOT).as_posix(), path


def test_backend_frameworks_only_in_backend_and_data_pipeline():
    offenders = [
        (name, module)
        for name, path in _library_modules()
        if not name.startswith("keras_dsd/backend/")
        and name not in DATA_PIPELINE
        for module in _imports(path)
        if module.split(".")[0] in FRAMEWORKS
    ]
    assert offenders == []


def _level(module):
    parts = module.split(".")
    if parts[0] != "keras_dsd" or len(parts) < 2:
        return None
    return LEVELS.get(parts[1])


def test_imports_run_one_way():
    offenders = []
    for name, path in _library_modules():
        parts = name[: -len(".py")].split("/")
        if len(parts) < 3:  # keras_dsd/__init__.py gathers everything
            continue
        own = LEVELS[parts[1].removesuffix(".py")] if len(parts) > 2 else None
        for module in _imports(path):
            level = _level(module)
            if level is not None and level > own:
                offenders.append((name, module))
    assert offenders == []


def test_every_package_has_a_level():
    packages = {
        p.name.removesuffix(".py")
        for p in PACKAGE.iterdir()
        if not p.name.startswith("_")
        and (p.is_dir() or p.suffix == ".py")
        and not p.name.endswith("_test.py")
    }
    assert packages <= set(LEVELS), packages - set(LEVELS)


DIGITS_USERS = [
    "examples/train_digits.py",
    "examples/latent_collapse.py",
    "guides/getting_started.py",
    "guides/latent_collapse.py",
    "benchmarks/recipe_study.py",
]
# Settings of the digits recipe that a copy would spell out.
RECIPE_LITERALS = [
    "t_min=0.25",
    "warmup_target=2e-3",
    "learning_rate=2e-3",
    "time_mean=-0.5",
    "CosineDecay(",
]


@pytest.mark.parametrize("path", DIGITS_USERS)
def test_digits_users_build_from_the_recipe(path):
    source = (ROOT / path).read_text()
    assert 'recipes.get("digits' in source
    copies = [literal for literal in RECIPE_LITERALS if literal in source]
    assert copies == []
