"""ImageNet-1k (ILSVRC 2012) for training: a folder tree or the TFDS build.

Both readers give the labels in the standard order, the sorted WordNet ids
(`n01440764` is 0, `n15075141` is 999), and both feed the same
`build_image_dataset` pipeline (ADM center crop, stateless shuffle and flip,
exact resume, sharding) as `ImageFolder.as_dataset`.
"""

import glob
import inspect
import os
import re

import numpy as np

from keras_dsd.datasets.image_folder import ImageFolder
from keras_dsd.datasets.image_folder import ImageSource
from keras_dsd.datasets.image_folder import build_image_dataset
from keras_dsd.datasets.image_folder import check_as_dataset_args
from keras_dsd.datasets.image_folder import import_tensorflow
from keras_dsd.utils import validation

IMAGENET_NUM_CLASSES = 1000
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VALIDATION_TAR = "ILSVRC2012_img_val.tar"

_WNID = re.compile(r"n\d{8}")
_WNID_RANGE = "ImageNet wnids n01440764...n15075141"
# Records read from the TFDS data source per Python call.
_READ_CHUNK = 64


def _subfolders(directory):
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def imagenet_folder(data_dir, split="train", num_classes=None):
    """ImageNet as an image-folder tree, `data_dir/<split>/<wnid>/*.JPEG`.

    The layout of the extracted training archive (and of the validation
    images once sorted into wnid folders). Labels follow the sorted wnids,
    the standard ImageNet order. The number of class folders is checked
    (1000 unless `num_classes` says otherwise), so that a half-extracted
    tree fails here rather than training a model with the wrong labels.

    Args:
        data_dir: string or path. The folder holding `<split>/`, or the
            split folder itself (the one holding the wnid folders).
        split: string. Subfolder of `data_dir`, such as `"train"` or
            `"val"`. Defaults to `"train"`.
        num_classes: int or `None`. Expected number of class folders, for a
            subset of ImageNet; `None` expects all 1000. Defaults to `None`.

    Returns:
        A `keras_dsd.datasets.ImageFolder`; call its `as_dataset`.

    Example:
    ```python
    folder = keras_dsd.datasets.imagenet_folder("/data/imagenet")
    dataset = folder.as_dataset(image_size=256, batch_size=64)
    ```
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise ValueError(
            "`data_dir` must be an existing folder holding ImageNet's "
            f"<split>/<wnid>/ images; got data_dir={data_dir!r}."
        )
    if not isinstance(split, str) or not split:
        raise ValueError(
            f'`split` must be a folder name such as "train"; got '
            f"split={split!r}."
        )
    expected = IMAGENET_NUM_CLASSES
    if num_classes is not None:
        expected = validation.check_positive_int(num_classes, "num_classes")
    directory = os.path.join(data_dir, split)
    if not os.path.isdir(directory):
        if not any(_WNID.fullmatch(f) for f in _subfolders(data_dir)):
            raise ValueError(
                f"`data_dir` has neither a `{split}` folder nor wnid class "
                f"folders ({_WNID_RANGE}): data_dir={data_dir!r}."
            )
        directory = data_dir  # `data_dir` is the split folder itself.
    folders = _subfolders(directory)
    others = [f for f in folders if not _WNID.fullmatch(f)]
    if others:
        raise ValueError(
            f"found folders that are not {_WNID_RANGE} under {directory!r}: "
            f"{others[:5]}. Point `data_dir` at the folder holding "
            f"`{split}/`, or at the split folder itself."
        )
    if len(folders) != expected:
        if folders:
            hint = (
                f" Pass num_classes={len(folders)} to train on this subset."
                if num_classes is None
                else ""
            )
        else:
            hint = (
                " Validation images must first be sorted into one folder "
                "per wnid."
            )
        raise ValueError(
            f"found {len(folders)} class folders under {directory!r}, "
            f"expected {expected} ({_WNID_RANGE}).{hint}"
        )
    return ImageFolder(directory, class_names=folders)


def _base_split(split):
    base = split.split("[", 1)[0]
    return {"val": "validation"}.get(base, base), split[len(base) :]


def _prepared_versions(data_dir):
    """Versions of imagenet2012 fully prepared under `data_dir`, oldest
    first."""
    pattern = os.path.join(data_dir, "imagenet2012", "*", "dataset_info.json")
    versions = [
        os.path.basename(os.path.dirname(path)) for path in glob.glob(pattern)
    ]
    versions = [v for v in versions if re.fullmatch(r"\d+\.\d+\.\d+", v)]
    return sorted(versions, key=lambda v: tuple(map(int, v.split("."))))


def _check_manual_dir(manual_dir, data_dir):
    if manual_dir is None:
        raise ValueError(
            "`manual_dir` is required: imagenet2012 is not prepared under "
            f"data_dir={data_dir!r}, and it is built from {TRAIN_TAR} and "
            f"{VALIDATION_TAR} (from https://image-net.org), which "
            "`manual_dir` must hold."
        )
    manual_dir = os.fspath(manual_dir)
    if not os.path.isdir(manual_dir):
        raise ValueError(
            f"`manual_dir` must be an existing folder holding {TRAIN_TAR} "
            f"and {VALIDATION_TAR}; got manual_dir={manual_dir!r}."
        )
    missing = [
        name
        for name in (TRAIN_TAR, VALIDATION_TAR)
        if not os.path.isfile(os.path.join(manual_dir, name))
    ]
    if missing:
        raise ValueError(
            f"`manual_dir` lacks {' and '.join(missing)} (ImageNet's "
            "official archives from https://image-net.org, needed to "
            f"prepare imagenet2012): manual_dir={manual_dir!r}."
        )
    return manual_dir


class TfdsImageSource(ImageSource):
    """Random access to a TFDS ArrayRecord split, images left encoded.

    Records are read in chunks by one Python call
    (`data_source.__getitems__`); an unreadable record is replaced by the
    next record of the split (with its label).
    """

    def __init__(self, data_source):
        super().__init__()
        self.data_source = data_source
        self.num_items = len(data_source)

    def _records(self, items):
        records = self.data_source.__getitems__([int(i) for i in items])
        contents = np.array([r["image"] for r in records], dtype=object)
        labels = np.array([r["label"] for r in records], dtype="int32")
        names = np.array([r["file_name"] for r in records], dtype=object)
        return contents, labels, names

    def read_elements(self, dataset):
        tf = import_tensorflow()

        def read(indices, items):
            contents, labels, names = tf.numpy_function(
                self._records, [items], [tf.string, tf.int32, tf.string]
            )
            for tensor in (contents, labels, names):
                tensor.set_shape([None])
            return indices, items, contents, labels, names

        return dataset.batch(_READ_CHUNK).map(read).unbatch()

    def read_item(self, item):
        try:
            record = self.data_source[int(item)]
        except Exception:  # noqa: BLE001
            return None, -1, f"record {int(item)}"
        return record["image"], int(record["label"]), record["file_name"]

    def substitute_item(self, item):
        return (int(item) + 1) % self.num_items


def imagenet_tfds(
    data_dir, manual_dir, image_size, batch_size, split="train", **kwargs
):
    """ImageNet from the TFDS `imagenet2012` build, as `(images, labels)`.

    On first use the dataset is built from ImageNet's official archives
    (`ILSVRC2012_img_train.tar`, `ILSVRC2012_img_val.tar`) in `manual_dir`
    into `data_dir`, in the ArrayRecord format (random access, which the
    exact shuffle, resume and sharding of the pipeline need); later calls
    reuse it. Nothing is ever downloaded: without a prepared copy and
    without the archives this raises a `ValueError` before TFDS is touched.
    Build it once, from one process, before starting a multi-process run.

    The images are read still encoded (`tfds.decode.SkipDecoding`) and go
    through the same decoding, ADM center crop and flip as
    `ImageFolder.as_dataset`; labels are TFDS's, the sorted wnid order.

    Args:
        data_dir: string or path. TFDS data folder (the dataset lives in
            `data_dir/imagenet2012/<version>/`).
        manual_dir: string, path or `None`. Folder of the official tar
            files; only needed while the dataset is not prepared.
        image_size: int. Side of the square output images.
        batch_size: int. Images per batch, per shard (per process).
        split: string. `"train"` or `"validation"` (`"val"` also works),
            optionally with a TFDS slice such as `"train[:10%]"`. Defaults
            to `"train"`.
        **kwargs: The keyword arguments of `ImageFolder.as_dataset`:
            `shuffle`, `seed`, `random_flip`, `start_step`, `num_shards`,
            `shard_index`, `repeat`, `drop_remainder`, `num_parallel_calls`,
            `prefetch`.

    Returns:
        A `tf.data.Dataset` of uint8 `(batch_size, image_size, image_size,
        3)` images and int32 `(batch_size,)` labels.

    Example:
    ```python
    dataset = keras_dsd.datasets.imagenet_tfds(
        "/data/tensorflow_datasets",
        manual_dir="/data/imagenet_tars",
        image_size=256,
        batch_size=64,
    )
    ```
    """
    arguments = inspect.signature(build_image_dataset).bind(
        None, image_size, batch_size, **kwargs
    )
    arguments.apply_defaults()
    options = dict(arguments.arguments)
    check_as_dataset_args(
        image_size,
        batch_size,
        options["seed"],
        options["start_step"],
        options["num_shards"],
        options["shard_index"],
        options["num_parallel_calls"],
    )
    if not isinstance(split, str):
        raise ValueError(f"`split` must be a string; got split={split!r}.")
    base, slicing = _base_split(split)
    if base not in ("train", "validation"):
        raise ValueError(
            '`split` must be "train" or "validation" (optionally sliced, '
            f'as "train[:10%]"); got split={split!r}.'
        )
    if data_dir is None:
        raise ValueError(
            "`data_dir` must be the TFDS data folder; got data_dir=None."
        )
    data_dir = os.fspath(data_dir)
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ValueError(
            f"`data_dir` must be a folder; got a file: data_dir={data_dir!r}."
        )
    versions = _prepared_versions(data_dir)
    if not versions:
        manual_dir = _check_manual_dir(manual_dir, data_dir)

    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError(
            "imagenet_tfds needs TensorFlow Datasets: `pip install "
            "tensorflow-datasets` (or `pip install keras-dsd[datasets]`)."
        ) from None
    if versions:
        builder = tfds.builder(
            f"imagenet2012:{versions[-1]}", data_dir=data_dir
        )
    else:
        builder = tfds.builder("imagenet2012", data_dir=data_dir)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, try_download_gcs=False
            ),
            file_format="array_record",
        )
    formats = {f.value for f in builder.info.available_file_formats()}
    if "array_record" not in formats:
        raise ValueError(
            f"imagenet2012 under {builder.data_dir!r} is stored as "
            f"{sorted(formats)}; this pipeline needs random access "
            "(array_record). Convert it once with `tfds convert_format "
            f"--dataset_version_dir={builder.data_dir} "
            "--out_file_format=array_record`."
        )
    data_source = builder.as_data_source(
        base + slicing,
        decoders={"image": tfds.decode.SkipDecoding()},
        file_format="array_record",
    )
    options.pop("source")
    options.pop("image_size")
    options.pop("batch_size")
    return build_image_dataset(
        TfdsImageSource(data_source), image_size, batch_size, **options
    )
