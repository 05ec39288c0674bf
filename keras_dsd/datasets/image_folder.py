"""Image-folder datasets: `directory/<class>/<image>` trees as `tf.data`.

The pipeline is built for training runs that stop and resume and that run
on several processes:

- The stream of examples is a pure function of `seed`: data-epoch `e` visits
  the files in the order `stateless_shuffle(range(N), seed=[seed, e])`, and
  stream element `i` is file `perm_{i // N}[i % N]`.
- `start_step` skips whole steps on the level of file indices (no file is
  read), so a run resumed at step `k` sees exactly the batches a straight run
  sees from step `k`.
- Sharding splits each global batch of `batch_size * num_shards` elements
  between processes; the union of the shards' batches at a step is the
  single-process batch of that step.
- The random horizontal flip of an element depends only on `seed` and the
  element's index in the stream.

Images are decoded by content (a PNG named `.JPEG` is fine), converted to
RGB, then resized and center-cropped as ADM does (guided-diffusion's
`center_crop_arr`): halve with a box filter while the short side is at least
twice the target, resize the short side to the target with bicubic
interpolation, crop the center. JPEGs are decoded with the accurate integer
DCT, which gives the same pixels as PIL.
"""

import io
import os
import threading
import warnings

import numpy as np

from keras_dsd.utils import validation

# The image files the library reads (image folders, evaluation references).
# JPEG, PNG, GIF and BMP decode in TensorFlow; WebP and TIFF fail its
# `looks_complete` check and are decoded by PIL (see `_rescue`), slower.
IMAGE_EXTENSIONS = (
    ".jpeg",
    ".jpg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
)

# A file whose first bytes and trailer do not look like a complete image is
# handed to PIL; if PIL cannot decode it either, its slot in the stream is
# filled by the next image of the same source (see `_rescue`), trying at most
# this many substitutes.
_MAX_SUBSTITUTES = 8


def import_tensorflow():
    """Imports TensorFlow, or says how to install it (the pipelines run on
    tf.data)."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError(
            "keras_dsd.datasets pipelines run on tf.data: `pip install "
            "tensorflow` (or `pip install keras-dsd[datasets]`)."
        ) from None
    return tf


def _list_images(directory):
    """Image files under `directory`, recursively, sorted; no hidden ones."""
    found = []
    for root, folders, files in os.walk(directory, followlinks=True):
        folders[:] = [f for f in folders if not f.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(root, name))
    return sorted(found)


class ImageSource:
    """What `build_image_dataset` reads from: numbered encoded images.

    Subclasses set `num_items` and implement `read_elements` (the fast,
    in-graph reads), `read_item` (one item in Python, for substitutes) and
    `substitute_item`. `skipped_files` lists the items found unreadable.
    """

    num_items = 0
    skip_hint = "a substitute takes its place in the stream"

    def __init__(self):
        self.skipped_files = []
        self._skip_lock = threading.Lock()

    def read_elements(self, dataset):
        """`(index, item)` elements -> `(index, item, contents, label,
        name)`, with `contents` the encoded image (a `tf.string`)."""
        raise NotImplementedError

    def read_item(self, item):
        """`(contents, label, name)` of one item, in Python; `contents` is
        `None` if it cannot be read."""
        raise NotImplementedError

    def substitute_item(self, item):
        """The item that takes the place of an unreadable `item`."""
        raise NotImplementedError

    def report_skipped(self, name, reason):
        """Adds `name` to `skipped_files` and warns, once per name."""
        with self._skip_lock:
            if name in self.skipped_files:
                return
            self.skipped_files.append(name)
        warnings.warn(
            f"Skipping unreadable image {name} ({reason}); {self.skip_hint}.",
            stacklevel=2,
        )


class ImageFolder(ImageSource):
    """A tree of images, one subfolder per class, as a `tf.data` pipeline.

    The folder is scanned once, on construction: every file under
    `directory/<class>/` (subfolders included) whose extension is one of
    `.jpeg .jpg .png .bmp .gif` (any case) is an image of that class. Hidden
    files and folders and other extensions are ignored. A class folder with
    no images is allowed; its class simply has no examples.

    Args:
        directory: string or path. The root folder, holding one subfolder
            per class.
        class_names: list of strings or `None`. The class folders, in label
            order: `class_names[i]` gets label `i`, and folders not listed are
            ignored. `None` takes every subfolder, sorted by name. Defaults to
            `None`.

    Attributes:
        directory: string. The root folder.
        class_names: list of strings. The class folders in label order.
        num_classes: int. `len(class_names)`.
        paths: numpy array of strings (object dtype). Every image file, sorted
            by class, then by path.
        labels: int32 numpy array. The label of each path.
        num_images: int. `len(paths)`.
        skipped_files: list of strings. Files found unreadable while a
            dataset of this folder was iterated (each listed once); see
            `as_dataset`.

    Example:
    ```python
    folder = keras_dsd.datasets.ImageFolder("flowers/")
    dataset = folder.as_dataset(image_size=64, batch_size=32)
    backbone = keras_dsd.models.DSDBackbone.from_preset(
        "dsd_tiny", image_size=64, num_classes=folder.num_classes
    )
    model = keras_dsd.models.DSDImageGenerator(backbone=backbone)
    model.compile()
    model.fit(dataset, steps_per_epoch=100, epochs=10)
    ```
    """

    def __init__(self, directory, class_names=None):
        super().__init__()
        directory = os.fspath(directory)
        if not os.path.exists(directory):
            raise ValueError(
                f"`directory` does not exist: directory={directory!r}."
            )
        if not os.path.isdir(directory):
            raise ValueError(
                "`directory` must be a folder of class subfolders, not a "
                f"file: directory={directory!r}."
            )
        subfolders = sorted(
            entry.name
            for entry in os.scandir(directory)
            if entry.is_dir() and not entry.name.startswith(".")
        )
        if class_names is None:
            if not subfolders:
                raise ValueError(
                    "`directory` has no class subfolders (expected "
                    f"directory/<class>/<image>): directory={directory!r}."
                )
            class_names = subfolders
        else:
            class_names = _check_class_names(class_names, subfolders, directory)
        paths = []
        labels = []
        for label, name in enumerate(class_names):
            files = _list_images(os.path.join(directory, name))
            paths.extend(files)
            labels.extend([label] * len(files))
        if not paths:
            extensions = "/".join(IMAGE_EXTENSIONS)
            raise ValueError(
                f"`directory` contains no images (looked for {extensions}, "
                f"any case, in {len(class_names)} class folders): "
                f"directory={directory!r}."
            )
        self.directory = directory
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.paths = np.array(paths, dtype=object)
        self.labels = np.array(labels, dtype="int32")
        self.num_images = len(paths)
        # The substitute of an unreadable file: the next file of its class
        # (cyclically; the files of a class are contiguous).
        self._next_in_class = np.arange(1, self.num_images + 1)
        ends = np.cumsum(np.bincount(self.labels, minlength=self.num_classes))
        starts = ends - np.bincount(self.labels, minlength=self.num_classes)
        for start, end in zip(starts, ends):
            if end > start:
                self._next_in_class[end - 1] = start

    def __len__(self):
        return self.num_images

    def __repr__(self):
        return (
            f"ImageFolder(directory={self.directory!r}, num_classes="
            f"{self.num_classes}, num_images={self.num_images})"
        )

    def as_dataset(
        self,
        image_size,
        batch_size,
        *,
        shuffle=True,
        seed=0,
        random_flip=True,
        start_step=0,
        num_shards=1,
        shard_index=0,
        repeat=True,
        drop_remainder=True,
        num_parallel_calls=None,
        prefetch=True,
    ):
        """A `tf.data.Dataset` of `(images, labels)` batches.

        Images are uint8 `(batch_size, image_size, image_size, 3)`, labels
        int32 `(batch_size,)`: the input `keras_dsd.models.DSDImageGenerator`
        fits on, on every Keras backend.

        Unreadable files. A file that does not look like a complete
        JPEG/PNG/GIF/BMP (zero bytes, text, a JPEG or PNG cut short, another
        format, bytes after a JPEG's end) is decoded by PIL instead, in a
        `tf.numpy_function` that runs only for such files. If PIL cannot
        decode it either, it is added to `skipped_files`, a warning names it
        (once), and its place in the stream is taken by the next image of
        its class, so that batches, `start_step` and shards stay aligned.
        Only these files are counted. A file that looks complete but still
        fails in TensorFlow's decoder (a corrupt header, say), or that
        cannot be opened at all, is dropped by `ignore_errors`, with
        TensorFlow's log warning; it is not counted, and every later batch
        of that process shifts by one element. Because of the Python
        fallback the dataset cannot be serialized (`tf.data` service,
        `Dataset.save`).

        Args:
            image_size: int. Side of the square output images.
            batch_size: int. Images per batch, per shard (per process).
            shuffle: bool. Visit the files in a new order every data-epoch,
                `stateless_shuffle(range(num_images), seed=[seed, epoch])`;
                `False` keeps the order of `paths`. Defaults to `True`.
            seed: int. Seed of the order and of the flips. Defaults to `0`.
            random_flip: bool. Flip each image horizontally with probability
                1/2, by a stateless draw keyed on `seed` and the element's
                index in the stream. Defaults to `True`.
            start_step: int. Number of batches to skip, as a run resumed at
                step `start_step` needs: the first `start_step * batch_size
                * num_shards` elements of the stream are skipped without
                being read. Defaults to `0`.
            num_shards: int. Number of processes sharing the stream.
                Defaults to `1`.
            shard_index: int. This process's shard, in `[0, num_shards)`.
                Defaults to `0`.
            repeat: bool. Stream data-epochs forever; `False` stops after
                one pass over the files. Defaults to `True`.
            drop_remainder: bool. Drop a last, smaller batch (only happens
                with `repeat=False`). Defaults to `True`.
            num_parallel_calls: int or `None`. Parallel decodes; `None`
                means `tf.data.AUTOTUNE`. Defaults to `None`.
            prefetch: bool. Prefetch batches (`tf.data.AUTOTUNE`). Defaults
                to `True`.

        Returns:
            A `tf.data.Dataset` of `(images, labels)`.
        """
        return build_image_dataset(
            self,
            image_size,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            random_flip=random_flip,
            start_step=start_step,
            num_shards=num_shards,
            shard_index=shard_index,
            repeat=repeat,
            drop_remainder=drop_remainder,
            num_parallel_calls=num_parallel_calls,
            prefetch=prefetch,
        )

    # === The `ImageSource` protocol of `build_image_dataset` ===
    skip_hint = "the next image of its class takes its place in the stream"

    @property
    def num_items(self):
        return self.num_images

    def read_elements(self, dataset):
        tf = import_tensorflow()
        paths = tf.constant(self.paths)
        labels = tf.constant(self.labels)

        def read(index, item):
            path = tf.gather(paths, item)
            return (
                index,
                item,
                tf.io.read_file(path),
                tf.gather(labels, item),
                path,
            )

        return dataset.map(read)

    def read_item(self, item):
        path = self.paths[item]
        try:
            with open(path, "rb") as f:
                contents = f.read()
        except OSError:
            contents = None
        return contents, int(self.labels[item]), path

    def substitute_item(self, item):
        return int(self._next_in_class[item])


def _check_class_names(class_names, subfolders, directory):
    if isinstance(class_names, str) or not all(
        isinstance(name, str) for name in class_names
    ):
        raise ValueError(
            "`class_names` must be a list of folder names (strings) or None; "
            f"got class_names={class_names!r}."
        )
    class_names = list(class_names)
    if not class_names:
        raise ValueError("`class_names` must not be empty; got [].")
    if len(set(class_names)) != len(class_names):
        raise ValueError(
            f"`class_names` has duplicates: class_names={class_names!r}."
        )
    missing = sorted(set(class_names) - set(subfolders))
    if missing:
        raise ValueError(
            f"`class_names` names {len(missing)} folder(s) missing under "
            f"directory={directory!r}: {missing[:5]}."
        )
    return class_names


# === Decoding and cropping ===
def looks_complete(contents):
    """Whether encoded bytes look like a whole JPEG, PNG, GIF or BMP.

    A cheap in-graph test of the signature and the trailer (JPEG's EOI
    marker, PNG's IEND chunk, GIF's `;`, BMP's size field), so that empty,
    foreign or cut-short files can be routed away from TensorFlow's
    decoders, which would fail on them or fill missing rows with gray.
    """
    tf = import_tensorflow()
    size = tf.strings.length(contents)

    def head(length):
        return tf.strings.substr(contents, 0, length)

    def tail(length):
        return tf.strings.substr(contents, tf.maximum(size - length, 0), length)

    is_jpeg = tf.logical_and(
        tf.equal(head(3), b"\xff\xd8\xff"), tf.equal(tail(2), b"\xff\xd9")
    )
    is_png = tf.logical_and(
        tf.equal(head(8), b"\x89PNG\r\n\x1a\n"),
        tf.equal(tail(8), b"IEND\xaeB`\x82"),
    )
    is_gif = tf.logical_and(
        tf.logical_or(
            tf.equal(head(6), b"GIF87a"), tf.equal(head(6), b"GIF89a")
        ),
        tf.equal(tail(1), b";"),
    )

    def bmp_size_matches():
        field = tf.strings.substr(contents, 2, 4)
        declared = tf.io.decode_raw(field, tf.int32, little_endian=True)[0]
        return tf.equal(declared, size)

    is_bmp = tf.cond(
        tf.logical_and(tf.equal(head(2), b"BM"), size >= 26),
        bmp_size_matches,
        lambda: tf.constant(False),
    )
    return tf.reduce_any(tf.stack([is_jpeg, is_png, is_gif, is_bmp]))


def decode_rgb(contents):
    """Encoded image bytes -> uint8 `(height, width, 3)`, by content.

    JPEGs use the accurate integer DCT (the same pixels as PIL; TF's
    default DCT differs by about one level) and `try_recover_truncated`,
    which fills missing rows with gray instead of failing (the pipeline
    sends JPEGs without an end marker to PIL first, so this only catches
    data missing in the middle of a file). Other formats go through
    `tf.io.decode_image` (first frame of a GIF). Gray, CMYK and RGBA become
    RGB (alpha is dropped, as PIL's `convert("RGB")` does).
    """
    tf = import_tensorflow()

    def jpeg():
        return tf.io.decode_jpeg(
            contents,
            channels=3,
            dct_method="INTEGER_ACCURATE",
            try_recover_truncated=True,
        )

    def other():
        image = tf.io.decode_image(
            contents, channels=3, expand_animations=False
        )
        image.set_shape([None, None, 3])
        return image

    is_jpeg = tf.equal(tf.strings.substr(contents, 0, 3), b"\xff\xd8\xff")
    return tf.cond(is_jpeg, jpeg, other)


def _box_halve(image, axis):
    """Halves `axis` (to `size // 2`) exactly as PIL's `BOX` resize does.

    PIL averages, for output `i`, the inputs `j` whose distance to the
    center `c = (i + 1/2) * s` (with `s = size / (size // 2)`) satisfies
    `-1/2 < (j - c + 1/2) / s <= 1/2`: two pixels, or three where an odd
    size makes `s` a little above 2. The test is evaluated with PIL's own
    float64 expressions, so that ties fall the same way; the mean is
    rounded half up, as PIL's fixed point does.
    """
    tf = import_tensorflow()
    size = tf.shape(image)[axis]
    return tf.cond(
        size % 2 == 0,
        lambda: _pair_mean(tf, image, axis),
        lambda: _pil_box_halve(tf, image, axis, size),
    )


def _pair_mean(tf, image, axis):
    # An even size: PIL averages the pairs (2i, 2i + 1).
    shape = tf.shape(image)
    if axis == 0:
        pairs = tf.reshape(image, [shape[0] // 2, 2, shape[1], 3])
    else:
        pairs = tf.reshape(image, [shape[0], shape[1] // 2, 2, 3])
    return tf.floor(tf.reduce_mean(pairs, axis=axis + 1) + 0.5)


def _pil_box_halve(tf, image, axis, size):
    scale = tf.cast(size, tf.float64) / tf.cast(size // 2, tf.float64)
    support = 0.5 * scale
    center = (tf.range(size // 2, dtype=tf.float64) + 0.5) * scale
    low = tf.cast(tf.floor(center - support + 0.5), tf.int32)
    high = tf.cast(tf.floor(center + support + 0.5), tf.int32)
    low = tf.maximum(low, 0)
    high = tf.minimum(high, size)
    candidates = low[:, None] + tf.range(5)[None, :]
    offsets = (tf.cast(candidates, tf.float64) - center[:, None] + 0.5) * (
        1.0 / scale
    )
    used = (candidates < high[:, None]) & (offsets > -0.5) & (offsets <= 0.5)
    first = tf.reduce_min(tf.where(used, candidates, size), axis=1)
    counts = tf.reduce_sum(tf.cast(used, tf.int32), axis=1)
    shape = [-1, 1, 1] if axis == 0 else [-1, 1]
    # The box is at most 3 pixels wide (`s <= 3`): sum 3 shifted gathers.
    total = 0.0
    for shift in range(3):
        rows = tf.gather(image, tf.minimum(first + shift, size - 1), axis=axis)
        weight = tf.cast(shift < counts, tf.float32)
        total += rows * tf.reshape(weight, shape)
    counts = tf.reshape(tf.cast(counts, tf.float32), shape)
    return tf.floor(total / counts + 0.5)


def adm_center_crop(image, image_size):
    """ADM's resize and center crop, as TensorFlow ops.

    The recipe of guided-diffusion's `center_crop_arr` (used by ADM, DiT and
    the DSD paper for ImageNet): while the short side is at least
    `2 * image_size`, halve both sides (integer division) with a box
    filter; then resize so that the short side is `image_size` (bicubic,
    antialiased as PIL's is, sides rounded half-to-even as Python's `round`
    does); then crop the central `image_size x image_size`. Images are
    rounded to integers after each halving, as PIL's uint8 images are. The
    halvings match PIL's `BOX` resize exactly; the bicubic step matches PIL
    to a fraction of a level on average.

    Args:
        image: uint8 tensor `(height, width, 3)`.
        image_size: int. Output side.

    Returns:
        uint8 tensor `(image_size, image_size, 3)`.
    """
    tf = import_tensorflow()
    image = tf.cast(image, tf.float32)

    def large(image):
        shape = tf.shape(image)
        return tf.minimum(shape[0], shape[1]) >= 2 * image_size

    def halve(image):
        # PIL resizes the width first, then the height.
        return [_box_halve(_box_halve(image, axis=1), axis=0)]

    (image,) = tf.while_loop(
        large,
        halve,
        [image],
        shape_invariants=[tf.TensorShape([None, None, 3])],
    )
    shape = tf.cast(tf.shape(image), tf.float64)
    scale = image_size / tf.minimum(shape[0], shape[1])
    height = tf.cast(tf.round(shape[0] * scale), tf.int32)
    width = tf.cast(tf.round(shape[1] * scale), tf.int32)
    image = tf.image.resize(
        image, [height, width], method="bicubic", antialias=True
    )
    top = (height - image_size) // 2
    left = (width - image_size) // 2
    image = image[top : top + image_size, left : left + image_size]
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _decode_with_pil(contents):
    """`(image, None)` or `(None, reason)`: the fallback decoder."""
    from PIL import Image
    from PIL import UnidentifiedImageError

    if not contents:
        return None, "empty file"
    try:
        with Image.open(io.BytesIO(contents)) as image:
            image.load()
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype="uint8"), None
    except UnidentifiedImageError:
        return None, "not an image format PIL can read"
    except Exception as error:  # noqa: BLE001
        return None, f"{type(error).__name__}: {error}"


def _as_text(name):
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    return str(name)


def _rescue(source, contents, label, name, item):
    """Decodes a file that failed `looks_complete`, or finds a substitute.

    Runs in Python (`tf.numpy_function`), only for such files. Returns
    `(image, label)`: PIL's decoding of the file, else of the first
    readable substitute (`source.substitute_item`, up to `_MAX_SUBSTITUTES`
    of them), else an empty `(0, 0, 3)` image and the element is dropped.
    """
    candidate = int(item)
    for attempt in range(_MAX_SUBSTITUTES + 1):
        if attempt:
            candidate = source.substitute_item(candidate)
            if candidate == int(item):
                break
            contents, label, name = source.read_item(candidate)
            if contents is None:
                source.report_skipped(_as_text(name), "cannot be read")
                continue
        image, reason = _decode_with_pil(bytes(contents))
        if image is not None:
            return image, np.int32(label)
        source.report_skipped(_as_text(name), reason)
    return np.zeros((0, 0, 3), "uint8"), np.int32(label)


# === The pipeline ===
def check_as_dataset_args(
    image_size,
    batch_size,
    seed,
    start_step,
    num_shards,
    shard_index,
    num_parallel_calls,
):
    validation.check_positive_int(image_size, "image_size")
    validation.check_positive_int(batch_size, "batch_size")
    validation.check_positive_int(num_shards, "num_shards")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an int, got seed={seed!r}.")
    if (
        isinstance(start_step, bool)
        or not isinstance(start_step, (int, np.integer))
        or start_step < 0
    ):
        raise ValueError(
            f"`start_step` must be an int >= 0, got start_step={start_step!r}."
        )
    if (
        isinstance(shard_index, bool)
        or not isinstance(shard_index, (int, np.integer))
        or not 0 <= shard_index < num_shards
    ):
        raise ValueError(
            f"`shard_index` must be an int in [0, num_shards={num_shards}), "
            f"got shard_index={shard_index!r}."
        )
    if num_parallel_calls is not None and (
        isinstance(num_parallel_calls, bool)
        or not isinstance(num_parallel_calls, (int, np.integer))
        or not (num_parallel_calls >= 1 or num_parallel_calls == -1)
    ):
        raise ValueError(
            "`num_parallel_calls` must be None, tf.data.AUTOTUNE or an int "
            f">= 1, got num_parallel_calls={num_parallel_calls!r}."
        )


def index_stream(num_items, *, shuffle=True, seed=0, repeat=True, start=0):
    """The stream of `(global_index, item)` pairs, from element `start`.

    Element `i` is `(i, perm_{i // num_items}[i % num_items])` with
    `perm_e = stateless_shuffle(range(num_items), seed=[seed, e])`
    (Philox), or `i % num_items` without `shuffle`. Starting at `start`
    costs one permutation, however large `start` is.
    """
    tf = import_tensorflow()
    first_epoch, offset = divmod(int(start), int(num_items))
    last_epoch = np.iinfo(np.int64).max if repeat else 1
    epochs = tf.data.Dataset.range(first_epoch, max(first_epoch, last_epoch))
    seed = tf.constant(seed, tf.int64)

    def epoch_elements(epoch):
        begin = tf.where(
            epoch == first_epoch,
            tf.constant(offset, tf.int64),
            tf.constant(0, tf.int64),
        )
        positions = tf.range(begin, num_items, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(
                tf.range(num_items, dtype=tf.int64),
                seed=tf.stack([seed, epoch]),
                alg="philox",
            )
            items = tf.gather(order, positions)
        else:
            items = positions
        return tf.data.Dataset.from_tensor_slices(
            (epoch * num_items + positions, items)
        )

    return epochs.flat_map(epoch_elements)


def build_image_dataset(
    source,
    image_size,
    batch_size,
    *,
    shuffle=True,
    seed=0,
    random_flip=True,
    start_step=0,
    num_shards=1,
    shard_index=0,
    repeat=True,
    drop_remainder=True,
    num_parallel_calls=None,
    prefetch=True,
):
    """The shared pipeline of `ImageFolder` and `imagenet_tfds`.

    `source` provides `num_items`, `read_elements(dataset)` (adds
    `contents, label, name` to `(index, item)` elements), `read_item(item)`,
    `substitute_item(item)` and `report_skipped(name, reason)`. Arguments
    as in `ImageFolder.as_dataset`.
    """
    check_as_dataset_args(
        image_size,
        batch_size,
        seed,
        start_step,
        num_shards,
        shard_index,
        num_parallel_calls,
    )
    tf = import_tensorflow()
    if num_parallel_calls is None:
        num_parallel_calls = tf.data.AUTOTUNE
    image_size = int(image_size)
    flip_key = tf.constant([int(seed), 1], tf.int64)

    dataset = index_stream(
        source.num_items,
        shuffle=shuffle,
        seed=int(seed),
        repeat=repeat,
        start=int(start_step) * int(batch_size) * int(num_shards),
    )
    if num_shards > 1:
        dataset = dataset.shard(int(num_shards), int(shard_index))
    dataset = source.read_elements(dataset)

    def rescue(contents, label, name, item):
        return _rescue(source, contents, label, name, item)

    def load(index, item, contents, label, name):
        def fallback():
            image, new_label = tf.numpy_function(
                rescue,
                [contents, label, name, item],
                [tf.uint8, tf.int32],
            )
            image.set_shape([None, None, 3])
            new_label.set_shape([])
            return image, new_label

        image, label = tf.cond(
            looks_complete(contents),
            lambda: (decode_rgb(contents), label),
            fallback,
        )
        found = tf.size(image) > 0
        image = tf.cond(
            found,
            lambda: adm_center_crop(image, image_size),
            lambda: tf.zeros([image_size, image_size, 3], tf.uint8),
        )
        if random_flip:
            key = tf.random.experimental.stateless_fold_in(
                flip_key, index, alg="philox"
            )
            flip = tf.random.stateless_uniform([], key, alg="philox") < 0.5
            image = tf.cond(
                flip, lambda: tf.reverse(image, axis=[1]), lambda: image
            )
        return image, label, found

    dataset = dataset.map(
        load, num_parallel_calls=num_parallel_calls, deterministic=True
    )
    dataset = dataset.ignore_errors(log_warning=True)
    dataset = dataset.filter(lambda image, label, found: found)
    dataset = dataset.map(lambda image, label, found: (image, label))
    dataset = dataset.batch(int(batch_size), drop_remainder=drop_remainder)
    if repeat:
        # `flat_map` hides it: tell `cardinality()` (and Keras) it is endless.
        dataset = dataset.apply(
            tf.data.experimental.assert_cardinality(
                tf.data.INFINITE_CARDINALITY
            )
        )
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset
