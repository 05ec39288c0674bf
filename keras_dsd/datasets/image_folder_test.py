import io
import os
import warnings

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from keras_dsd.datasets import image_folder  # noqa: E402
from keras_dsd.datasets.image_folder import ImageFolder  # noqa: E402
from keras_dsd.datasets.image_folder import adm_center_crop  # noqa: E402
from keras_dsd.testing import test_utils  # noqa: E402

# A `tf.data` pipeline, the same whichever backend Keras runs:
# `test_fit_on_an_image_folder` (dsd_image_generator_test.py) feeds it to
# `fit` on each.
pytestmark = pytest.mark.backend_independent


def natural_image(height, width, seed):
    """A photo-like test image: smooth gradients, blobs, a little noise."""
    return test_utils.photo_like_image(
        height, width, np.random.default_rng(seed)
    )


def encode(array, fmt, mode=None, **kwargs):
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def pil_center_crop(array, size):
    """An independent PIL implementation of ADM's recipe."""
    image = Image.fromarray(array)
    while min(image.size) >= 2 * size:
        image = image.resize(
            (image.width // 2, image.height // 2), resample=Image.BOX
        )
    scale = size / min(image.size)
    image = image.resize(
        (round(image.width * scale), round(image.height * scale)),
        resample=Image.BICUBIC,
    )
    array = np.asarray(image)
    top = (array.shape[0] - size) // 2
    left = (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


def batches(dataset, count):
    return [
        (images.numpy(), labels.numpy())
        for images, labels in dataset.take(count)
    ]


def stream(dataset, count):
    """The first `count` batches as one `(images, labels)` pair."""
    pairs = batches(dataset, count)
    return (
        np.concatenate([p[0] for p in pairs]),
        np.concatenate([p[1] for p in pairs]),
    )


@pytest.fixture
def tree(tmp_path):
    return test_utils.image_folder_tree(tmp_path / "tree")


# === Scanning ===
def test_scan_sorted_classes_and_labels(tmp_path):
    root = test_utils.image_folder_tree(tmp_path / "t", per_class=2)
    Image.fromarray(natural_image(8, 8, 0)).save(f"{root}/cat/UPPER.JPEG")
    os.makedirs(f"{root}/ant/nested")
    Image.fromarray(natural_image(8, 8, 1)).save(f"{root}/ant/nested/x.gif")
    Image.fromarray(natural_image(8, 8, 2)).save(f"{root}/ant/y.bmp")
    open(f"{root}/bee/notes.txt", "w").close()
    open(f"{root}/bee/.hidden.jpg", "w").close()
    os.makedirs(f"{root}/.cache")
    open(f"{root}/README.jpg", "w").close()  # not in a class folder

    folder = ImageFolder(root)
    assert folder.class_names == ["ant", "bee", "cat"]
    assert folder.num_classes == 3
    assert folder.num_images == len(folder) == 9
    assert folder.labels.dtype == np.int32
    assert folder.labels.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2]
    names = [os.path.relpath(p, root) for p in folder.paths]
    assert names[:4] == [
        "ant/0.jpg",
        "ant/1.png",
        "ant/nested/x.gif",
        "ant/y.bmp",
    ]
    assert "cat/UPPER.JPEG" in names
    assert all(isinstance(p, str) for p in folder.paths)
    assert folder.skipped_files == []


def test_class_names_fix_the_label_order(tree):
    folder = ImageFolder(tree, class_names=["cat", "ant"])
    assert folder.class_names == ["cat", "ant"]
    assert folder.num_images == 8
    for path, label in zip(folder.paths, folder.labels):
        assert os.path.basename(os.path.dirname(path)) == ["cat", "ant"][label]


def test_empty_class_folder_is_allowed(tree):
    os.makedirs(os.path.join(tree, "dog"))
    folder = ImageFolder(tree)
    assert folder.class_names == ["ant", "bee", "cat", "dog"]
    assert 3 not in folder.labels


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="`directory` does not exist"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a file|folder of class"):
        ImageFolder(tmp_path / "file.jpg")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolder(tmp_path / "flat")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.txt").write_bytes(b"x")
    with pytest.raises(
        ValueError, match=r"contains no images \(looked for .jpeg/.jpg/.png"
    ):
        ImageFolder(tmp_path / "empty")


def test_class_names_errors(tree):
    with pytest.raises(ValueError, match=r"missing under .*\['dog'\]"):
        ImageFolder(tree, class_names=["ant", "dog"])
    with pytest.raises(ValueError, match="duplicates"):
        ImageFolder(tree, class_names=["ant", "ant"])
    with pytest.raises(ValueError, match="list of folder names"):
        ImageFolder(tree, class_names="ant")
    with pytest.raises(ValueError, match="must not be empty"):
        ImageFolder(tree, class_names=[])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 0}, "`image_size` must be an int >= 1"),
        ({"batch_size": 2.5}, "`batch_size` must be an int >= 1"),
        ({"num_shards": 0}, "`num_shards` must be an int >= 1"),
        ({"num_shards": 2, "shard_index": 2}, r"`shard_index` must be .*\[0"),
        ({"start_step": -1}, "`start_step` must be an int >= 0"),
        ({"seed": None}, "`seed` must be an int"),
        ({"num_parallel_calls": 0}, "`num_parallel_calls` must be"),
    ],
)
def test_as_dataset_argument_errors(tree, kwargs, match):
    arguments = {"image_size": 16, "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        ImageFolder(tree).as_dataset(**arguments)


# === Decoding and cropping ===
@pytest.mark.parametrize(
    "height, width, size",
    [(375, 500, 32), (333, 500, 64), (41, 53, 16), (40, 50, 16), (20, 30, 32)],
)
def test_center_crop_matches_pil(height, width, size):
    # Odd sizes halve with 3-pixel boxes; (20, 30) -> 32 upsamples.
    array = natural_image(height, width, seed=height)
    expected = pil_center_crop(array, size).astype(int)
    actual = adm_center_crop(tf.constant(array), size).numpy()
    assert actual.shape == (size, size, 3) and actual.dtype == np.uint8
    difference = np.abs(actual.astype(int) - expected)
    # The box halvings are exact; TF's bicubic skips PIL's uint8 rounding
    # between the horizontal and vertical passes.
    assert difference.mean() < 0.5
    assert difference.max() <= 3


def test_box_halving_is_exact():
    array = np.random.default_rng(0).integers(0, 256, (41, 53, 3))
    expected = Image.fromarray(array.astype("uint8")).resize(
        (26, 20), resample=Image.BOX
    )
    image = tf.constant(array, tf.float32)
    actual = image_folder._box_halve(image_folder._box_halve(image, 1), 0)
    np.testing.assert_array_equal(actual.numpy(), np.asarray(expected))


def test_decode_by_content_and_to_rgb():
    array = natural_image(20, 30, seed=0)
    cases = {
        "jpeg": encode(array, "JPEG", quality=90),
        "png": encode(array, "PNG"),
        "gray": encode(array, "PNG", mode="L"),
        "rgba": encode(array, "PNG", mode="RGBA"),
        "cmyk": encode(array, "JPEG", mode="CMYK", quality=95),
        "gif": encode(array, "GIF"),
        "bmp": encode(array, "BMP"),
    }
    for name, contents in cases.items():
        assert image_folder.looks_complete(tf.constant(contents)), name
        image = image_folder.decode_rgb(tf.constant(contents)).numpy()
        assert image.shape == (20, 30, 3), name
        # The same pixels as PIL: JPEG uses the accurate integer DCT.
        reference = np.asarray(Image.open(io.BytesIO(contents)).convert("RGB"))
        tolerance = 8 if name == "cmyk" else 0
        assert np.abs(image.astype(int) - reference).max() <= tolerance, name
    jpeg = cases["jpeg"]
    for bad in [b"", b"plain text", jpeg[: len(jpeg) // 2], cases["png"][:-20]]:
        assert not image_folder.looks_complete(tf.constant(bad))


# === The pipeline ===
def test_shapes_dtypes_and_labels(tree):
    folder = ImageFolder(tree)
    dataset = folder.as_dataset(16, 4, shuffle=False)
    spec = dataset.element_spec
    assert spec[0].shape == (4, 16, 16, 3) and spec[0].dtype == tf.uint8
    assert spec[1].shape == (4,) and spec[1].dtype == tf.int32
    assert dataset.cardinality() == tf.data.INFINITE_CARDINALITY
    images, labels = stream(dataset, 3)
    np.testing.assert_array_equal(labels, folder.labels)
    assert images.shape == (12, 16, 16, 3)


def test_images_match_pil_reference(tree):
    folder = ImageFolder(tree)
    dataset = folder.as_dataset(16, 4, shuffle=False, random_flip=False)
    images, _ = stream(dataset, 3)
    for path, image in zip(folder.paths, images):
        reference = pil_center_crop(np.asarray(Image.open(path)), 16)
        difference = np.abs(image.astype(int) - reference)
        assert difference.mean() < 0.5 and difference.max() <= 3, path


def test_same_seed_same_stream_new_order_each_epoch(tree):
    folder = ImageFolder(tree)
    first = stream(folder.as_dataset(16, 4, seed=3), 6)
    again = stream(folder.as_dataset(16, 4, seed=3), 6)
    other = stream(folder.as_dataset(16, 4, seed=4), 6)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])

    indices = list(image_folder.index_stream(12, seed=3).take(36))
    items = np.array([int(item) for _, item in indices]).reshape(3, 12)
    assert [int(index) for index, _ in indices] == list(range(36))
    for epoch, order in enumerate(items):
        assert sorted(order) == list(range(12))
        expected = tf.random.experimental.stateless_shuffle(
            tf.range(12, dtype=tf.int64), seed=[3, epoch], alg="philox"
        )
        np.testing.assert_array_equal(order, expected.numpy())
    assert not np.array_equal(items[0], items[1])
    assert not np.array_equal(items[1], items[2])
    no_shuffle = image_folder.index_stream(5, shuffle=False).take(7)
    assert [int(item) for _, item in no_shuffle] == [0, 1, 2, 3, 4, 0, 1]


def test_start_step_resumes_exactly(tree):
    folder = ImageFolder(tree)
    straight = stream(folder.as_dataset(16, 5, seed=1), 7)
    for start_step in (1, 4):  # 4 starts in the second data-epoch
        resumed = stream(
            folder.as_dataset(16, 5, seed=1, start_step=start_step), 3
        )
        begin = start_step * 5
        end = begin + 15
        np.testing.assert_array_equal(resumed[0], straight[0][begin:end])
        np.testing.assert_array_equal(resumed[1], straight[1][begin:end])


def test_shards_union_is_the_global_batch(tree):
    folder = ImageFolder(tree)
    single = batches(folder.as_dataset(16, 6, seed=2, start_step=1), 4)
    shards = [
        batches(
            folder.as_dataset(
                16, 2, seed=2, start_step=1, num_shards=3, shard_index=k
            ),
            4,
        )
        for k in range(3)
    ]
    for step in range(4):
        images, labels = single[step]
        # Shard k holds the global batch's elements k, k + 3, ...
        for k in range(3):
            np.testing.assert_array_equal(shards[k][step][0], images[k::3])
            np.testing.assert_array_equal(shards[k][step][1], labels[k::3])


def test_flip_is_stateless_per_element(tree):
    folder = ImageFolder(tree)
    plain, _ = stream(
        folder.as_dataset(16, 4, shuffle=False, random_flip=False), 6
    )
    flipped, _ = stream(folder.as_dataset(16, 4, shuffle=False), 6)
    mirrored = np.array(
        [np.array_equal(f, p[:, ::-1]) for f, p in zip(flipped, plain)]
    )
    same = np.array([np.array_equal(f, p) for f, p in zip(flipped, plain)])
    assert np.all(mirrored | same)
    assert 0 < mirrored.sum() < len(mirrored)
    # Epoch 2 flips other elements: the key is the stream index.
    assert not np.array_equal(mirrored[:12], mirrored[12:])
    # Another batch size gives the same flips.
    regrouped, _ = stream(folder.as_dataset(16, 3, shuffle=False), 8)
    np.testing.assert_array_equal(regrouped, flipped)


def test_one_pass_without_repeat(tree):
    folder = ImageFolder(tree)
    assert len(batches(folder.as_dataset(16, 5, repeat=False), 10)) == 2
    dataset = folder.as_dataset(16, 5, repeat=False, drop_remainder=False)
    sizes = [len(labels) for _, labels in batches(dataset, 10)]
    assert sizes == [5, 5, 2]
    resumed = folder.as_dataset(16, 5, repeat=False, start_step=3)
    assert batches(resumed, 1) == []


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    root = test_utils.image_folder_tree(
        tmp_path / "t", classes=("ant", "bee"), per_class=3
    )
    array = natural_image(40, 50, seed=99)
    jpeg = encode(array, "JPEG", quality=90)
    good = {
        "ant/png_named.JPEG": encode(array, "PNG"),
        "ant/cmyk.jpg": encode(array, "JPEG", mode="CMYK"),
        "ant/gray.png": encode(array, "PNG", mode="L"),
        "ant/rgba.png": encode(array, "PNG", mode="RGBA"),
        "bee/anim.gif": encode(array, "GIF"),
        "bee/trailing.jpg": jpeg + b"\x00" * 16,  # PIL decodes it
    }
    bad = {
        "ant/empty.jpg": b"",
        "bee/text.JPEG": b"this is not an image",
        "bee/cut.jpg": jpeg[: len(jpeg) // 2],
        "bee/cut.png": encode(array, "PNG")[:-200],
    }
    for name, contents in {**good, **bad}.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(contents)
    folder = ImageFolder(root)
    assert folder.num_images == 16
    dataset = folder.as_dataset(16, 4, shuffle=False, random_flip=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, labels = stream(dataset, 8)  # two data-epochs
    messages = [str(w.message) for w in caught]
    skipped = [m for m in messages if "Skipping unreadable image" in m]
    assert len(skipped) == 4  # once per file, not once per epoch
    expected_skips = {os.path.join(root, name) for name in bad}
    assert set(folder.skipped_files) == expected_skips
    assert len(folder.skipped_files) == 4
    # Every slot is filled, with an image of the same class.
    np.testing.assert_array_equal(labels[:16], folder.labels)
    np.testing.assert_array_equal(labels[16:], folder.labels)
    # Every good file comes through, and a bad one's slot holds the next
    # image of its class.
    paths = list(folder.paths)
    for i, path in enumerate(paths):
        j = i
        while paths[j] in expected_skips:
            j = folder.substitute_item(j)
        reference = pil_center_crop(
            np.asarray(Image.open(paths[j]).convert("RGB")), 16
        )
        difference = np.abs(images[i].astype(int) - reference)
        assert difference.mean() < 1.0, path


def test_webp_and_tiff_are_read_through_pil(tmp_path):
    # Formats TensorFlow cannot decode take the PIL path, uncounted as
    # skipped, and give the same crop as PIL's own decoding.
    root = tmp_path / "formats"
    os.makedirs(root / "a")
    arrays = [natural_image(40, 50, seed=s) for s in range(2)]
    Image.fromarray(arrays[0]).save(root / "a" / "0.webp", lossless=True)
    Image.fromarray(arrays[1]).save(root / "a" / "1.tiff")
    folder = ImageFolder(str(root))
    assert [os.path.basename(p) for p in folder.paths] == ["0.webp", "1.tiff"]
    dataset = folder.as_dataset(16, 2, shuffle=False, random_flip=False)
    images, _ = stream(dataset, 1)
    for array, image in zip(arrays, images):
        difference = np.abs(image.astype(int) - pil_center_crop(array, 16))
        assert difference.mean() < 0.5 and difference.max() <= 3
    assert folder.skipped_files == []
