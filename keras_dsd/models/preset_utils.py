"""Preset folders in the keras-hub layout, without any download.

A preset folder holds:

- `config.json`: the backbone, as `keras.saving.serialize_keras_object`.
- `model.weights.h5`: the backbone weights.
- `task.json` and `task.weights.h5` (tasks only): the task, including the
  teacher and sampling-EMA copies of the network.
- `metadata.json`: versions and parameter counts.

Every file is written to a temporary name first and moved into place, so an
interrupted save never leaves a half-written file under the final name.
"""

import json
import os

import keras

from keras_dsd.utils.file_utils import atomic_write
from keras_dsd.utils.file_utils import write_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
TASK_CONFIG_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
METADATA_FILE = "metadata.json"


def builtin_presets():
    from keras_dsd.models.dsd.dsd_presets import backbone_presets

    return backbone_presets


def check_preset(preset):
    """Returns `"builtin"` or `"folder"`, or raises a clear `ValueError`."""
    if isinstance(preset, str) and preset in builtin_presets():
        return "builtin"
    if isinstance(preset, (str, os.PathLike)) and os.path.isfile(
        os.path.join(preset, CONFIG_FILE)
    ):
        return "folder"
    raise ValueError(
        f"Unknown preset: preset={preset!r}. Expected one of the built-in "
        f"presets {sorted(builtin_presets())} or a folder written by "
        "`save_to_preset()` (containing config.json). Presets are never "
        "downloaded."
    )


def _write_weights(path, model):
    def write(tmp_path):
        os.remove(tmp_path)  # h5py refuses to overwrite an empty file
        model.save_weights(tmp_path)

    atomic_write(path, write)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def save_backbone(backbone, preset_dir):
    os.makedirs(preset_dir, exist_ok=True)
    write_json(
        os.path.join(preset_dir, CONFIG_FILE),
        keras.saving.serialize_keras_object(backbone),
    )
    _write_weights(os.path.join(preset_dir, WEIGHTS_FILE), backbone)
    from keras_dsd.version import __version__

    write_json(
        os.path.join(preset_dir, METADATA_FILE),
        {
            "keras_dsd_version": __version__,
            "keras_version": keras.version(),
            "parameter_count": int(backbone.count_params()),
        },
    )


def save_task(task, preset_dir):
    save_backbone(task.backbone, preset_dir)
    # A preset is for inference and fine-tuning from scratch optimizer
    # state: no compile config, so that loading never needs the optimizer's
    # variables (which do not load across backends).
    serialized = keras.saving.serialize_keras_object(task)
    serialized.pop("compile_config", None)
    write_json(os.path.join(preset_dir, TASK_CONFIG_FILE), serialized)
    _write_weights(os.path.join(preset_dir, TASK_WEIGHTS_FILE), task)


def load_backbone(cls, preset, load_weights=True, **kwargs):
    if check_preset(preset) == "builtin":
        config = {**builtin_presets()[preset]["config"], **kwargs}
        return cls(**config)
    config = _read_json(os.path.join(preset, CONFIG_FILE))["config"]
    architecture_changed = any(
        k != "dtype" and config.get(k) != v for k, v in kwargs.items()
    )
    backbone = cls.from_config({**config, **kwargs})
    if load_weights and not architecture_changed:
        backbone.load_weights(os.path.join(preset, WEIGHTS_FILE))
    return backbone


def load_task(cls, backbone_cls, preset, load_weights=True, **kwargs):
    kind = check_preset(preset)
    task_config = os.path.join(str(preset), TASK_CONFIG_FILE)
    if kind == "builtin" or not os.path.isfile(task_config):
        backbone = backbone_cls.from_preset(preset, load_weights=load_weights)
        return cls(backbone=backbone, **kwargs)
    serialized = _read_json(task_config)
    serialized.pop("compile_config", None)
    serialized["config"].update(kwargs)
    task = keras.saving.deserialize_keras_object(serialized)
    if load_weights:
        task.load_weights(os.path.join(preset, TASK_WEIGHTS_FILE))
    return task
