import io
import os
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow")

from keras_dsd.datasets import imagenet  # noqa: E402
from keras_dsd.datasets.imagenet import imagenet_folder  # noqa: E402
from keras_dsd.datasets.imagenet import imagenet_tfds  # noqa: E402

# `tf.data` and TFDS, the same whichever backend Keras runs.
pytestmark = pytest.mark.backend_independent

# Real wnids: TFDS turns them into labels through its list of the 1000.
TRAIN_WNIDS = ("n01443537", "n01440764")


def jpeg(seed, size=(40, 50)):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (*size, 3), dtype="uint8")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_wnid_tree(root, wnids, per_class=2):
    for i, wnid in enumerate(wnids):
        os.makedirs(os.path.join(root, wnid))
        for j in range(per_class):
            path = os.path.join(root, wnid, f"{wnid}_{j}.JPEG")
            with open(path, "wb") as f:
                f.write(jpeg(10 * i + j))
    return str(root)


def add_to_tar(tar, name, contents):
    info = tarfile.TarInfo(name)
    info.size = len(contents)
    tar.addfile(info, io.BytesIO(contents))


def make_fake_archives(manual_dir, per_class=3, num_val=3):
    """Tiny ILSVRC2012 train (a tar of per-wnid tars) and val tars."""
    os.makedirs(manual_dir, exist_ok=True)
    with tarfile.open(os.path.join(manual_dir, imagenet.TRAIN_TAR), "w") as tar:
        for i, wnid in enumerate(TRAIN_WNIDS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as wnid_tar:
                for j in range(per_class):
                    add_to_tar(wnid_tar, f"{wnid}_{j}.JPEG", jpeg(10 * i + j))
            add_to_tar(tar, f"{wnid}.tar", inner.getvalue())
    path = os.path.join(manual_dir, imagenet.VALIDATION_TAR)
    with tarfile.open(path, "w") as tar:
        for k in range(1, num_val + 1):
            add_to_tar(tar, f"ILSVRC2012_val_{k:08d}.JPEG", jpeg(100 + k))
    return str(manual_dir)


# === imagenet_folder ===
def test_imagenet_folder_labels_and_split_folder(tmp_path):
    wnids = ("n00000003", "n00000001", "n00000002")
    make_wnid_tree(tmp_path / "data" / "train", wnids)
    folder = imagenet_folder(tmp_path / "data", num_classes=3)
    assert folder.class_names == sorted(wnids)
    assert folder.num_images == 6
    assert folder.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert folder.directory == str(tmp_path / "data" / "train")
    # `data_dir` may also be the split folder itself.
    same = imagenet_folder(tmp_path / "data" / "train", num_classes=3)
    assert same.paths.tolist() == folder.paths.tolist()
    make_wnid_tree(tmp_path / "data" / "val", wnids[:1])
    val = imagenet_folder(tmp_path / "data", split="val", num_classes=1)
    assert val.class_names == ["n00000003"]


def test_imagenet_folder_errors(tmp_path):
    root = make_wnid_tree(tmp_path / "train", ("n00000001", "n00000002"))
    with pytest.raises(
        ValueError,
        match=r"found 2 class folders under .*train', expected 1000 "
        r"\(ImageNet wnids n01440764\.\.\..*num_classes=2",
    ):
        imagenet_folder(tmp_path)
    with pytest.raises(ValueError, match="found 2 .* expected 5"):
        imagenet_folder(root, num_classes=5)
    with pytest.raises(ValueError, match="`num_classes` must be an int >= 1"):
        imagenet_folder(root, num_classes=0)
    with pytest.raises(ValueError, match="neither a `val` folder nor wnid"):
        imagenet_folder(tmp_path, split="val", num_classes=2)
    with pytest.raises(ValueError, match="must be an existing folder"):
        imagenet_folder(tmp_path / "missing")
    os.makedirs(tmp_path / "train" / "junk")
    with pytest.raises(ValueError, match=r"not ImageNet wnids .*\['junk'\]"):
        imagenet_folder(tmp_path, num_classes=3)
    flat = tmp_path / "flat" / "val"
    flat.mkdir(parents=True)
    (flat / "ILSVRC2012_val_00000001.JPEG").write_bytes(jpeg(0))
    with pytest.raises(ValueError, match="found 0 .* sorted into one folder"):
        imagenet_folder(tmp_path / "flat", split="val")


# === imagenet_tfds ===
@pytest.fixture
def no_tfds(monkeypatch):
    """Makes any import of TFDS fail: the checks must come first."""
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)


def test_imagenet_tfds_checks_before_tfds(tmp_path, no_tfds):
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(ValueError, match="`manual_dir` is required"):
        imagenet_tfds(data_dir, None, 64, 8)
    with pytest.raises(ValueError, match="`manual_dir` must be an existing"):
        imagenet_tfds(data_dir, tmp_path / "nowhere", 64, 8)
    manual = tmp_path / "manual"
    manual.mkdir()
    with pytest.raises(
        ValueError,
        match="lacks ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar",
    ):
        imagenet_tfds(data_dir, manual, 64, 8)
    (manual / imagenet.TRAIN_TAR).write_bytes(b"")
    with pytest.raises(ValueError, match="lacks ILSVRC2012_img_val.tar"):
        imagenet_tfds(data_dir, manual, 64, 8)
    with pytest.raises(ValueError, match='`split` must be "train" or'):
        imagenet_tfds(data_dir, manual, 64, 8, split="test")
    with pytest.raises(ValueError, match="`image_size` must be an int"):
        imagenet_tfds(data_dir, manual, 0, 8)
    with pytest.raises(ValueError, match="`shard_index`"):
        imagenet_tfds(data_dir, manual, 64, 8, num_shards=2, shard_index=5)
    with pytest.raises(TypeError, match="image_sizes"):
        imagenet_tfds(data_dir, manual, 64, 8, image_sizes=3)
    (manual / imagenet.VALIDATION_TAR).write_bytes(b"")
    # Only now, with both archives present, would TFDS be imported.
    with pytest.raises(ImportError, match="TensorFlow Datasets"):
        imagenet_tfds(data_dir, manual, 64, 8)


def test_imagenet_tfds_from_fake_archives(tmp_path):
    # A real TFDS build, offline, from two 3-image classes and 3 val images.
    tfds = pytest.importorskip("tensorflow_datasets")
    manual = make_fake_archives(tmp_path / "manual")
    data_dir = str(tmp_path / "tfds")
    dataset = imagenet_tfds(data_dir, manual, 16, 3, seed=0)
    images, labels = next(iter(dataset))
    assert images.shape == (3, 16, 16, 3) and images.dtype == "uint8"
    assert labels.dtype == "int32"
    assert set(labels.numpy()) <= {0, 1}  # n01440764 -> 0, n01443537 -> 1

    # Prepared now: `manual_dir` is no longer needed; one pass, file order.
    train = imagenet_tfds(
        data_dir, None, 16, 6, shuffle=False, repeat=False, random_flip=False
    )
    ((images, labels),) = list(train)
    assert sorted(labels.numpy().tolist()) == [0, 0, 0, 1, 1, 1]

    # Resume and shards behave as for folders.
    straight = [b for b, _ in imagenet_tfds(data_dir, None, 16, 2).take(4)]
    resumed = [
        b for b, _ in imagenet_tfds(data_dir, None, 16, 2, start_step=2).take(2)
    ]
    np.testing.assert_array_equal(np.stack(resumed), np.stack(straight[2:]))
    shard = imagenet_tfds(data_dir, None, 16, 1, num_shards=2, shard_index=1)
    firsts = [b[0] for b, _ in shard.take(2)]
    np.testing.assert_array_equal(firsts[0], straight[0][1])
    np.testing.assert_array_equal(firsts[1], straight[1][1])

    # Validation labels come from TFDS's list, in the sorted-wnid order.
    root = os.path.join(
        os.path.dirname(tfds.__file__), "datasets", "imagenet2012"
    )
    with open(os.path.join(root, "labels.txt")) as f:
        wnids = f.read().split()
    with open(os.path.join(root, "validation_labels.txt")) as f:
        val_wnids = f.read().split()[:3]
    val = imagenet_tfds(
        data_dir, None, 16, 3, split="val", shuffle=False, repeat=False
    )
    ((_, labels),) = list(val)
    expected = sorted(wnids.index(w) for w in val_wnids)
    assert sorted(labels.numpy().tolist()) == expected
