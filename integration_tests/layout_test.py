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


def _imports(path, package_root=ROOT):
    """Every module name that `path` imports, at any depth, absolute.

    `from a import b` yields `a.b` (b may be a module or a name in `a`),
    and relative imports are resolved against the file's package.
    """
    package = path.relative_to(package_root).with_suffix("").parts[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module.split(".") if node.module else []
            if node.level:
                base = list(package[: len(package) - node.level + 1]) + base
            names.extend(".".join(base + [alias.name]) for alias in node.names)
    return names


def _library_modules(package=PACKAGE):
    """`(name relative to the package's parent, path)` of every library
    module: tests and the scripts under `testdata/` are not part of it."""
    for path in sorted(package.rglob("*.py")):
        if path.name.endswith("_test.py") or "testdata" in path.parts:
            continue
        yield path.relative_to(package.parent).as_posix(), path


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
    """The level of a `keras_dsd` module, or `None` outside the package.

    `keras_dsd` itself gathers every subpackage: it is above them all.
    """
    parts = module.split(".")
    if parts[0] != "keras_dsd":
        return None
    if len(parts) == 1:
        return max(LEVELS.values()) + 1
    return LEVELS.get(parts[1])


def upward_imports(package=PACKAGE):
    """`(module, imported name)` for every import of a higher level."""
    offenders = []
    for name, path in _library_modules(package):
        parts = name[: -len(".py")].split("/")
        if parts[1:] == ["__init__"]:  # keras_dsd/__init__.py gathers all
            continue
        own = LEVELS[parts[1]]
        for module in _imports(path, package.parent):
            level = _level(module)
            if level is not None and level > own:
                offenders.append((name, module))
    return offenders


def test_imports_run_one_way():
    assert upward_imports() == []


def test_every_import_form_is_seen(tmp_path):
    # A planted tree with one upward import in each form the checker must
    # see, and the same forms pointing downwards, which are allowed.
    package = tmp_path / "keras_dsd"
    files = {
        "__init__.py": "from keras_dsd import models\n",
        "recipes.py": "from keras_dsd import models, testing\n",
        "version.py": "import keras_dsd.utils\n",
        "utils/__init__.py": "",
        "utils/a.py": "from keras_dsd import models\n",
        "utils/b.py": "import keras_dsd.callbacks.c\n",
        "utils/c.py": "from keras_dsd.recipes import get\n",
        "utils/d.py": "from .. import metrics\n",
        "utils/e.py": "def f():\n    import keras_dsd\n",
        "layers/__init__.py": "from keras_dsd import utils\n",
        "layers/f.py": "from ..utils import a\nfrom . import g\n",
        "models/__init__.py": "from keras_dsd.layers import f\n",
        "testing/__init__.py": "",
    }
    for name, source in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(source)
    assert sorted(upward_imports(package)) == [
        ("keras_dsd/recipes.py", "keras_dsd.testing"),
        ("keras_dsd/utils/a.py", "keras_dsd.models"),
        ("keras_dsd/utils/b.py", "keras_dsd.callbacks.c"),
        ("keras_dsd/utils/c.py", "keras_dsd.recipes.get"),
        ("keras_dsd/utils/d.py", "keras_dsd.metrics"),
        ("keras_dsd/utils/e.py", "keras_dsd"),
        ("keras_dsd/version.py", "keras_dsd.utils"),
    ]


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
    # The warm-up as a constant cosine (`alpha=1.0`), as the recipe once
    # spelled it; a decaying cosine is a different schedule.
    "alpha=1.0",
]


@pytest.mark.parametrize("path", DIGITS_USERS)
def test_digits_users_build_from_the_recipe(path):
    source = (ROOT / path).read_text()
    assert 'recipes.get("digits' in source
    copies = [literal for literal in RECIPE_LITERALS if literal in source]
    assert copies == []
