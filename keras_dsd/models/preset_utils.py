"""Presets of DSD models, read and written through keras-hub's own code.

`keras_hub.src.utils.preset_utils` resolves every handle (a local folder,
`kaggle://`, `hf://`, `gs://`, `modelscope://`), downloads and caches files,
writes `config.json` / `metadata.json` and shards large weights. This module
adds only what is particular to DSD:

- built-in presets are architectures without weights: a built-in name gives
  a freshly initialised network (keras-hub would look for a Kaggle handle);
- the weights layout below, in which no network is stored twice;
- one-line errors for bad input, and saves that never mix two models' files
  or leave a half-written file under a final name.

Layout of a preset folder (`keras_dsd_layout: 2` in `metadata.json`):

- `config.json`: the `DSDBackbone` (keras-hub's format).
- `model.weights.h5`: the weights to generate with: the sampling EMA of a
  task that has one, else the trained network. Above `max_shard_size` GB it
  is sharded as `model.weights.json` + `model_*.weights.h5`.
- `metadata.json`: keras-hub's metadata, plus `keras_dsd_version` and
  `keras_dsd_layout`.
- `task.json` (task presets only): the `DSDImageGenerator` config.
- `task.weights.h5` (task presets only): every task variable that is not in
  `model.weights.h5`: the trained (online) network when an EMA exists, the
  teacher, and the task's own state (e.g. its EMA update counter). Not the
  optimizer: its state does not load across backends, and a loaded task
  starts a fresh one.

`DSDBackbone.from_preset(dir)` and `keras_hub.models.Backbone.from_preset(dir)`
therefore return the generation weights, and a task preset stores each
network once (dsd_tiny: 3 networks instead of 4).

Folders written before this layout (`model.weights.h5` = the online network,
`task.weights.h5` = the whole task, no `keras_dsd_layout`) still load: their
`task.weights.h5` is read in full.
"""

import glob
import json
import os
import shutil
import tempfile

import keras
from keras_hub.src.utils import preset_utils as hub_preset_utils

CONFIG_FILE = hub_preset_utils.CONFIG_FILE
WEIGHTS_FILE = hub_preset_utils.MODEL_WEIGHTS_FILE
SHARDED_WEIGHTS_FILE = hub_preset_utils.SHARDED_MODEL_WEIGHTS_CONFIG_FILE
TASK_CONFIG_FILE = hub_preset_utils.TASK_CONFIG_FILE
TASK_WEIGHTS_FILE = hub_preset_utils.TASK_WEIGHTS_FILE
METADATA_FILE = hub_preset_utils.METADATA_FILE
LAYOUT = 2
# Handles keras-hub resolves itself (TensorFlow's gfile adds more schemes,
# e.g. `gs`, when TensorFlow is installed).
HUB_SCHEMES = (
    hub_preset_utils.KAGGLE_SCHEME,
    hub_preset_utils.HF_SCHEME,
    hub_preset_utils.GS_SCHEME,
    hub_preset_utils.MODELSCOPE_SCHEME,
)


def builtin_presets():
    from keras_dsd.models.dsd.dsd_presets import backbone_presets

    return backbone_presets


def builtin_config(preset):
    """The constructor arguments of a built-in preset, or `None`."""
    if isinstance(preset, str) and preset in builtin_presets():
        return dict(builtin_presets()[preset]["config"])
    return None


def check_handle(preset):
    """Raises a one-line `ValueError` for a handle keras-hub cannot read."""
    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(
            f"preset={preset!r} is not a preset: expected a built-in name "
            f"{sorted(builtin_presets())}, a preset folder, or a kaggle://, "
            "hf:// or gs:// handle."
        )
    preset = os.fspath(preset)
    if "://" in preset:
        scheme = preset.split("://")[0].lower()
        known = set(HUB_SCHEMES) | set(hub_preset_utils.tf_registered_schemes())
        if scheme not in known:
            raise ValueError(
                f"preset={preset!r}: unknown handle scheme `{scheme}://`; "
                f"expected one of {sorted(HUB_SCHEMES)} or a local folder."
            )
        return preset
    if not os.path.isfile(os.path.join(preset, CONFIG_FILE)):
        raise ValueError(
            f"Unknown preset: preset={preset!r} is neither a built-in preset "
            f"{sorted(builtin_presets())} nor a folder with {CONFIG_FILE} "
            "(written by `save_to_preset()`), nor a kaggle://, hf:// or "
            "gs:// handle."
        )
    return preset


def get_loader(preset, backbone_base):
    """keras-hub's loader for `preset`, checked to hold a `backbone_base`."""
    preset = check_handle(preset)
    try:
        loader = hub_preset_utils.get_preset_loader(preset)
        registered = loader.config.get("registered_name")
        backbone_cls = loader.check_backbone_class()
    except (ValueError, OSError, KeyError, AttributeError) as e:
        raise ValueError(
            f"preset={preset!r} is not a readable keras_dsd preset "
            f"({type(e).__name__}: {_one_line(e)})."
        ) from e
    if not (
        isinstance(backbone_cls, type)
        and issubclass(backbone_cls, backbone_base)
    ):
        raise ValueError(
            f"preset={preset!r} holds a `{registered}`, not a "
            f"`{backbone_base.__name__}`: it is a preset of another "
            "architecture."
        )
    return preset, loader, backbone_cls


def load_backbone(cls, preset, load_weights=True, **kwargs):
    config = builtin_config(preset)
    if config is not None:
        return cls(**{**config, **kwargs})
    preset, loader, backbone_cls = get_loader(preset, cls)
    saved = loader.config["config"]
    architecture_changed = any(
        k not in ("dtype", "name", "trainable") and saved.get(k) != v
        for k, v in kwargs.items()
    )
    backbone = loader.load_backbone(backbone_cls, False, **kwargs)
    if load_weights and not architecture_changed:
        _load(
            preset,
            WEIGHTS_FILE,
            lambda: loader._load_backbone_weights(backbone),
        )
    return backbone


def load_task(cls, backbone_cls, preset, load_weights=True, **kwargs):
    """Loads a task preset (or builds the task on a backbone preset)."""
    if builtin_config(preset) is not None:
        backbone = backbone_cls.from_preset(preset)
        return cls(backbone=backbone, **kwargs)
    preset, loader, _ = get_loader(preset, backbone_cls)
    if not hub_preset_utils.check_file_exists(preset, TASK_CONFIG_FILE):
        backbone = load_backbone(backbone_cls, preset, load_weights)
        return cls(backbone=backbone, **kwargs)
    task_config = hub_preset_utils.load_json(preset, TASK_CONFIG_FILE)
    registered = task_config.get("registered_name")
    task_cls = keras.saving.get_registered_object(registered)
    if not (isinstance(task_cls, type) and issubclass(task_cls, cls)):
        raise ValueError(
            f"preset={preset!r} holds a `{registered}` task, not a "
            f"`{cls.__name__}`."
        )
    task_config.pop("compile_config", None)
    task_config["config"] = {**task_config["config"], **kwargs}
    task = keras.saving.deserialize_keras_object(task_config)
    if load_weights:
        _load_task_weights(task, preset, loader)
    return task


def _load_task_weights(task, preset, loader):
    metadata = {}
    if hub_preset_utils.check_file_exists(preset, METADATA_FILE):
        metadata = hub_preset_utils.load_json(preset, METADATA_FILE)

    def load():
        path = hub_preset_utils.get_file(preset, TASK_WEIGHTS_FILE)
        if metadata.get("keras_dsd_layout", 1) < LAYOUT:
            # The old layout's task file holds the whole task (and the
            # optimizer state when it was saved compiled, left out here).
            skipped = [task.optimizer] if task.optimizer is not None else []
            keras.saving.load_weights(task, path, objects_to_skip=skipped)
            return
        keras.saving.load_weights(
            task, path, objects_to_skip=_not_in_task_weights(task)
        )
        loader._load_backbone_weights(task.inference_backbone)

    _load(preset, f"{TASK_WEIGHTS_FILE} / {WEIGHTS_FILE}", load)


def _load(preset, what, fn):
    try:
        fn()
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise ValueError(
            f"preset={preset!r}: could not load the weights ({what}); "
            f"expected the files written by `save_to_preset()` for this "
            f"architecture ({type(e).__name__}: {_one_line(e)})."
        ) from e


def _one_line(error):
    text = " ".join(str(error).split())
    return text if len(text) < 200 else text[:197] + "..."


# === Saving ===
def save_backbone(backbone, preset_dir, max_shard_size=10):
    with _staged(preset_dir, backbone, None) as staging:
        _write_backbone(staging, backbone, backbone, max_shard_size)


def save_task(task, preset_dir, max_shard_size=10):
    """Writes a task preset in the layout of this module's docstring."""
    with _staged(preset_dir, task.backbone, task) as staging:
        _write_backbone(
            staging, task.backbone, task.inference_backbone, max_shard_size
        )
        saver = hub_preset_utils.get_preset_saver(staging)
        saver._save_serialized_object(task, TASK_CONFIG_FILE)
        keras.saving.save_weights(
            task,
            os.path.join(staging, TASK_WEIGHTS_FILE),
            objects_to_skip=_not_in_task_weights(task),
        )


def _not_in_task_weights(task):
    """What `task.weights.h5` leaves out: the network stored in
    `model.weights.h5`, and the optimizer (its state does not load across
    backends; a loaded task starts a fresh optimizer)."""
    skipped = list(task.inference_backbone._flatten_layers())
    if getattr(task, "optimizer", None) is not None:
        skipped.append(task.optimizer)
    return skipped


def _write_backbone(staging, backbone, weights_from, max_shard_size):
    """`config.json` and metadata of `backbone`; weights of `weights_from`
    (the same architecture), sharded as keras-hub shards them."""
    saver = hub_preset_utils.get_preset_saver(staging)
    if weights_from is backbone:
        saver.save_backbone(backbone, max_shard_size=max_shard_size)
    else:
        saver._save_serialized_object(backbone, CONFIG_FILE)
        saver._save_metadata(backbone)
        size_gb = (
            saver._get_variables_size_in_bytes(weights_from.variables) / 1024**3
        )
        if max_shard_size is not None and size_gb > max_shard_size:
            weights_from.save_weights(
                os.path.join(staging, SHARDED_WEIGHTS_FILE),
                max_shard_size=max_shard_size,
            )
        else:
            weights_from.save_weights(os.path.join(staging, WEIGHTS_FILE))
    from keras_dsd.version import __version__

    path = os.path.join(staging, METADATA_FILE)
    with open(path) as f:
        metadata = json.load(f)
    metadata.update(
        {"keras_dsd_version": __version__, "keras_dsd_layout": LAYOUT}
    )
    with open(path, "w") as f:
        json.dump(metadata, f, indent=4)


class _staged:
    """Writes into a temporary folder beside `preset_dir`, then moves each
    file into place: an interrupted save leaves no half-written file under a
    final name, and a refused save touches nothing."""

    def __init__(self, preset_dir, backbone, task):
        self.preset_dir = os.fspath(preset_dir)
        _check_target(self.preset_dir, backbone, task)

    def __enter__(self):
        parent = os.path.dirname(os.path.abspath(self.preset_dir))
        os.makedirs(parent, exist_ok=True)
        self.staging = tempfile.mkdtemp(prefix=".preset-", dir=parent)
        return self.staging

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                os.makedirs(self.preset_dir, exist_ok=True)
                for name in sorted(os.listdir(self.staging)):
                    os.replace(
                        os.path.join(self.staging, name),
                        os.path.join(self.preset_dir, name),
                    )
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
        return False


def _registered_name(path):
    try:
        with open(path) as f:
            return json.load(f).get("registered_name")
    except (OSError, ValueError, AttributeError):
        return None


def _check_target(preset_dir, backbone, task):
    """Refuses to write over another model's preset (it would mix files)."""
    if os.path.exists(preset_dir) and not os.path.isdir(preset_dir):
        raise ValueError(
            f"save_to_preset: preset_dir={preset_dir!r} is a file; expected "
            "a folder (new, empty, or a preset of the same model)."
        )
    config = os.path.join(preset_dir, CONFIG_FILE)
    task_config = os.path.join(preset_dir, TASK_CONFIG_FILE)
    problems = []
    if os.path.exists(config):
        found = _registered_name(config)
        expected = keras.saving.get_registered_name(type(backbone))
        if found != expected:
            problems.append(f"its {CONFIG_FILE} holds `{found}`")
    if os.path.exists(task_config):
        found = _registered_name(task_config)
        if task is None:
            problems.append(f"it holds a task preset (`{found}`)")
        elif found != keras.saving.get_registered_name(type(task)):
            problems.append(f"its {TASK_CONFIG_FILE} holds `{found}`")
    elif task is None and glob.glob(os.path.join(preset_dir, "task.*")):
        problems.append("it holds task files")
    if problems:
        expected = type(task or backbone).__name__
        raise ValueError(
            f"save_to_preset: refusing to write a {expected} into "
            f"preset_dir={preset_dir!r}: {'; '.join(problems)}. Expected a "
            "new or empty folder, or a preset of the same model."
        )
