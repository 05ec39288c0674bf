"""Task presets, remote handles, bad input, construction-time compile and
int8 quantization of `DSDImageGenerator`."""

import hashlib
import json
import os
import shutil

import h5py
import keras
import keras_hub
import numpy as np
import pytest
from keras_hub.src.utils import preset_utils as hub_preset_utils

from keras_dsd.models.dsd.dsd_backbone import DSDBackbone
from keras_dsd.models.dsd.dsd_image_generator import DSDImageGenerator
from keras_dsd.testing import test_utils

BACKEND = keras.backend.backend()


def _networks(model):
    return [model.backbone, model.teacher_backbone, model.ema_backbone]


@keras.saving.register_keras_serializable(package="keras_dsd_test")
class _GeneratorWithState(DSDImageGenerator):
    """A task with task-level variables of its own, like an EMA update
    counter: every such variable must survive a preset round trip."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_count = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="extra_count",
        )
        self.extra_table = self.add_weight(
            shape=(2, 3),
            initializer="zeros",
            trainable=False,
            name="extra_table",
        )


def _task_level_variables(model):
    """Variables of the task that belong to none of its three networks
    (e.g. an EMA update counter). Seed generator states are left out:
    Keras never writes them to weights files, so training resumed from a
    preset (or a `.keras` file) draws its noise from the seed again."""
    in_networks = {id(v) for n in _networks(model) for v in n.variables}
    return [
        v
        for v in model.variables
        if id(v) not in in_networks
        and not v.path.endswith("seed_generator_state")
    ]


def _trained_model(cls=DSDImageGenerator):
    backbone = test_utils.randomize_weights(
        test_utils.tiny_backbone(), seed=1, stddev=0.2
    )
    model = cls(backbone, teacher_decay=0.5, ema_decay=0.9, seed=0)
    model.compile(jit_compile=False, run_eagerly=True)
    images = test_utils.random_images(2)
    labels = test_utils.random_labels(2)
    model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained model whose task-level variables hold known values, saved
    as a preset."""
    model = _trained_model(_GeneratorWithState)
    # The first step's learning rate is 0 (warm-up), so the sampling
    # weights still equal the online ones: give them values of their own.
    test_utils.randomize_weights(model.ema_backbone, seed=7, stddev=0.2)
    known = []
    for i, variable in enumerate(_task_level_variables(model)):
        value = np.full(variable.shape, 3 + i).astype(variable.dtype)
        variable.assign(value)
        known.append(value)
    preset_dir = str(tmp_path_factory.mktemp("presets") / "task")
    model.save_to_preset(preset_dir)
    return model, preset_dir, known


def _numpy(weights):
    return [np.asarray(test_utils.to_numpy(w)) for w in weights]


def _assert_same(a, b):
    for x, y in zip(_numpy(a), _numpy(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _h5_num_values(path):
    total = []
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda _, obj: (
                total.append(obj.size)
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    return sum(total)


def _snapshot(folder):
    """File names and contents' hashes of a folder (recursive)."""
    result = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                result[os.path.relpath(path, folder)] = hashlib.sha256(
                    f.read()
                ).hexdigest()
    return result


# === Layout ===
def test_task_preset_layout_stores_each_network_once(saved):
    model, preset_dir, _ = saved
    assert set(os.listdir(preset_dir)) == {
        "config.json",
        "metadata.json",
        "model.weights.h5",
        "task.json",
        "task.weights.h5",
    }
    with open(os.path.join(preset_dir, "metadata.json")) as f:
        metadata = json.load(f)
    params = model.backbone.count_params()
    assert metadata["keras_dsd_layout"] == 2
    assert metadata["parameter_count"] == params
    # model.weights.h5: one network. task.weights.h5: the trained network
    # and the teacher (2 x params) plus the few task-level values (7 in
    # `_GeneratorWithState`, and any counter of the task itself), no
    # optimizer and no third copy.
    assert (
        _h5_num_values(os.path.join(preset_dir, "model.weights.h5")) == params
    )
    task_values = _h5_num_values(os.path.join(preset_dir, "task.weights.h5"))
    assert 2 * params <= task_values <= 2 * params + 64
    # keras-hub's own checks, the ones `keras_hub.upload_preset` runs.
    hub_preset_utils._validate_backbone(preset_dir)


def test_backbone_preset_holds_the_generation_weights(saved):
    model, preset_dir, _ = saved
    for loaded in (
        DSDBackbone.from_preset(preset_dir),
        keras_hub.models.Backbone.from_preset(preset_dir),
    ):
        _assert_same(loaded.weights, model.ema_backbone.weights)
    assert not np.array_equal(
        _numpy(model.ema_backbone.weights)[0], _numpy(model.backbone.weights)[0]
    )


def test_round_trip_restores_networks_and_task_state(saved):
    model, preset_dir, known = saved
    restored = DSDImageGenerator.from_preset(preset_dir)
    assert type(restored) is _GeneratorWithState
    for a, b in zip(_networks(restored), _networks(model), strict=True):
        _assert_same(a.weights, b.weights)
    assert len(known) >= 2
    restored_values = _numpy(_task_level_variables(restored))
    for restored_value, value in zip(restored_values, known, strict=True):
        np.testing.assert_array_equal(restored_value, value)
    # Compiled with the defaults (a preset holds no optimizer state).
    assert restored.optimizer is not None
    # Generation uses the restored EMA: same images as the original.
    np.testing.assert_array_equal(
        restored.generate([0, 2], num_steps=2, seed=0),
        model.generate([0, 2], num_steps=2, seed=0),
    )


def test_max_shard_size_shards_the_backbone_weights(saved, tmp_path):
    model, _, _ = saved
    preset_dir = str(tmp_path / "sharded")
    # 2e-5 GB is about 21 kB: the 12,792-parameter network (51 kB, its
    # largest variable 16 kB) spreads over several files.
    model.save_to_preset(preset_dir, max_shard_size=2e-5)
    files = set(os.listdir(preset_dir))
    assert "model.weights.json" in files and "model.weights.h5" not in files
    assert len([f for f in files if f.startswith("model_")]) >= 2
    restored = DSDImageGenerator.from_preset(preset_dir)
    for a, b in zip(_networks(restored), _networks(model), strict=True):
        _assert_same(a.weights, b.weights)


def test_old_layout_still_loads(tmp_path):
    # The layout written before keras-hub's loader: model.weights.h5 holds
    # the trained network and task.weights.h5 the whole task; no
    # `keras_dsd_layout` in the metadata.
    model = _trained_model()
    folder = str(tmp_path / "old")
    os.makedirs(folder)
    for name, obj in (("config.json", model.backbone), ("task.json", model)):
        serialized = keras.saving.serialize_keras_object(obj)
        serialized.pop("compile_config", None)
        with open(os.path.join(folder, name), "w") as f:
            json.dump(serialized, f)
    model.backbone.save_weights(os.path.join(folder, "model.weights.h5"))
    model.save_weights(os.path.join(folder, "task.weights.h5"))
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        json.dump({"keras_dsd_version": "0.1.0", "parameter_count": 1}, f)
    restored = DSDImageGenerator.from_preset(folder)
    for a, b in zip(_networks(restored), _networks(model), strict=True):
        _assert_same(a.weights, b.weights)


# === Remote handles, offline ===
def _serve_from(folder, calls):
    def fetch(handle, path):
        calls.append((handle, path))
        local = os.path.join(folder, path)
        if not os.path.exists(local):
            raise FileNotFoundError(f"`{path}` doesn't exist in `{handle}`.")
        return local

    return fetch


@pytest.mark.parametrize(
    "handle",
    [
        "hf://someone/dsd-tiny-digits",
        "kaggle://someone/dsd/keras/dsd_tiny",
        "gs://bucket/dsd_tiny",
    ],
)
def test_remote_handles_go_through_keras_hub(saved, handle, monkeypatch):
    model, preset_dir, _ = saved
    calls = []
    fetch = _serve_from(preset_dir, calls)
    if handle.startswith("hf://"):
        monkeypatch.setattr(
            hub_preset_utils.huggingface_hub,
            "hf_hub_download",
            lambda repo_id, filename: fetch(repo_id, filename),
        )
        expected_handle = "someone/dsd-tiny-digits"
    elif handle.startswith("kaggle://"):
        monkeypatch.setattr(hub_preset_utils.kagglehub, "model_download", fetch)
        expected_handle = "someone/dsd/keras/dsd_tiny"
    else:
        monkeypatch.setattr(
            hub_preset_utils, "tf_registered_schemes", lambda: ["gs"]
        )
        monkeypatch.setattr(hub_preset_utils, "tf_copy_gfile_to_cache", fetch)
        expected_handle = handle
    restored = DSDImageGenerator.from_preset(handle)
    for a, b in zip(_networks(restored), _networks(model), strict=True):
        _assert_same(a.weights, b.weights)
    backbone = DSDBackbone.from_preset(handle)
    _assert_same(backbone.weights, model.ema_backbone.weights)
    fetched = {path for h, path in calls if h == expected_handle}
    assert {
        "config.json",
        "task.json",
        "model.weights.h5",
        "task.weights.h5",
    } <= fetched


def test_upload_preset_uploads_the_folder(saved, monkeypatch):
    _, preset_dir, _ = saved
    hf = hub_preset_utils.huggingface_hub
    uploads = []

    class Repo:
        repo_id = "someone/dsd-tiny-digits"

    monkeypatch.setattr(hf, "create_repo", lambda repo_id, exist_ok: Repo)
    monkeypatch.setattr(hf, "file_exists", lambda repo_id, filename: True)
    monkeypatch.setattr(
        hf,
        "upload_folder",
        lambda repo_id, folder_path: uploads.append((repo_id, folder_path)),
    )
    keras_hub.upload_preset("hf://someone/dsd-tiny-digits", preset_dir)
    assert uploads == [("someone/dsd-tiny-digits", preset_dir)]


# === Bad input ===
def _assert_one_line_error(fn, match, folder=None):
    before = _snapshot(folder) if folder else None
    with pytest.raises(ValueError, match=match) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    if folder:
        assert repr(folder) in message or folder in message
        assert _snapshot(folder) == before, "a failed load changed the preset"


def test_unknown_scheme():
    _assert_one_line_error(
        lambda: DSDImageGenerator.from_preset("s3://bucket/dsd"),
        "unknown handle scheme `s3://`",
    )
    _assert_one_line_error(
        lambda: DSDBackbone.from_preset("nope"), "preset='nope'"
    )


def _write_config(folder, registered_name, name="config.json"):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w") as f:
        json.dump(
            {
                "module": "x",
                "class_name": registered_name.split(">")[-1],
                "config": {},
                "registered_name": registered_name,
            },
            f,
        )


def test_preset_of_another_architecture(tmp_path):
    folder = str(tmp_path / "bert")
    _write_config(folder, "keras_hub>BertBackbone")
    for load in (DSDBackbone.from_preset, DSDImageGenerator.from_preset):
        _assert_one_line_error(
            lambda: load(folder), "BertBackbone.*another architecture", folder
        )


def test_preset_of_another_keras_dsd_class(saved, tmp_path):
    folder = str(tmp_path / "layer")
    _write_config(folder, "keras_dsd>PatchEmbedding")
    _assert_one_line_error(
        lambda: DSDBackbone.from_preset(folder), "PatchEmbedding", folder
    )
    _, preset_dir, _ = saved
    folder = str(tmp_path / "task_of_another_class")
    shutil.copytree(preset_dir, folder)
    _write_config(folder, "keras_dsd>DSDBackbone", name="task.json")
    _assert_one_line_error(
        lambda: DSDImageGenerator.from_preset(folder),
        "not a `DSDImageGenerator`",
        folder,
    )


@pytest.mark.parametrize("damage", ["missing", "truncated"])
@pytest.mark.parametrize("file", ["model.weights.h5", "task.weights.h5"])
def test_missing_or_truncated_weights(saved, tmp_path, damage, file):
    _, preset_dir, _ = saved
    folder = str(tmp_path / "damaged")
    shutil.copytree(preset_dir, folder)
    path = os.path.join(folder, file)
    if damage == "missing":
        os.remove(path)
    else:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    loaders = [DSDImageGenerator.from_preset]
    if file == "model.weights.h5":
        loaders.append(DSDBackbone.from_preset)
    for load in loaders:
        _assert_one_line_error(
            lambda: load(folder), "could not load the weights", folder
        )


def test_save_refuses_a_folder_of_another_model(saved, tmp_path):
    model, preset_dir, _ = saved
    folder = str(tmp_path / "bert")
    _write_config(folder, "keras_hub>BertBackbone")
    _assert_one_line_error(
        lambda: model.save_to_preset(folder), "refusing", folder
    )
    _assert_one_line_error(
        lambda: model.backbone.save_to_preset(folder), "refusing", folder
    )
    # A backbone written into a task preset would mix two models' files.
    folder = str(tmp_path / "task")
    shutil.copytree(preset_dir, folder)
    _assert_one_line_error(
        lambda: model.backbone.save_to_preset(folder), "task preset", folder
    )
    # Saving the same model again over its own preset is fine.
    model.save_to_preset(folder)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".preset-")]


# === Compiled at construction ===
def _datasets(images, labels):
    yield "numpy", (images, labels), {"batch_size": 2}
    import tensorflow as tf

    yield (
        "tf.data",
        (tf.data.Dataset.from_tensor_slices((images, labels)).batch(2), None),
        {},
    )

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return images, labels

    yield "PyDataset", (Batches(), None), {}
    if BACKEND == "torch":
        import torch

        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(
                torch.from_numpy(images), torch.from_numpy(labels)
            ),
            batch_size=2,
        )
        yield "DataLoader", (loader, None), {}


@pytest.mark.large(except_backend="torch")
def test_fit_without_compile_accepts_every_input_kind():
    model = DSDImageGenerator(test_utils.tiny_backbone(), seed=0)
    images = test_utils.random_images(2)
    labels = test_utils.random_labels(2)
    kinds = []
    for kind, (x, y), kwargs in _datasets(images, labels):
        model.fit(x, y, epochs=1, verbose=0, **kwargs)
        kinds.append(kind)
    # One optimizer step (one batch of 2) per input kind.
    steps = int(test_utils.to_numpy(model.optimizer.iterations))
    assert steps == len(kinds) == (4 if BACKEND == "torch" else 3)


def test_compile_false_leaves_it_uncompiled():
    model = DSDImageGenerator(test_utils.tiny_backbone(), compile=False)
    assert getattr(model, "optimizer", None) is None


# === int8 ===
@pytest.mark.large
def test_int8_quantized_inference():
    model = DSDImageGenerator(
        test_utils.randomize_weights(
            test_utils.tiny_backbone(), seed=1, stddev=0.2
        ),
        seed=0,
    )
    images = test_utils.random_images(4)
    float_latents = model.encode(images)
    model.quantize("int8")
    dense = [
        layer
        for layer in model.inference_backbone._flatten_layers()
        if isinstance(layer, keras.layers.Dense)
    ]
    assert dense and all(d.quantization_mode == "int8" for d in dense)
    assert all(
        keras.backend.standardize_dtype(d._kernel.dtype) == "int8"
        for d in dense
    )
    latents = model.encode(images)
    assert latents.shape == float_latents.shape
    # Per-token LayerNorm'd latents (unit variance per token): int8
    # weights move them by a few percent, not more.
    error = np.sqrt(np.mean((latents - float_latents) ** 2))
    assert error < 0.1
    generated = model.generate([0, 1], num_steps=2, seed=0)
    assert generated.shape == (2, 8, 8, 3) and generated.dtype == np.uint8
    decoded = model.decode(latents)
    assert decoded.shape == (4, 8, 8, 3) and decoded.dtype == np.uint8
