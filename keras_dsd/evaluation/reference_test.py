import numpy as np
import pytest
from PIL import Image

from keras_dsd.evaluation import reference

# No Keras call: run with one backend (conftest.py).
pytestmark = pytest.mark.backend_independent


def save_pngs(folder, images):
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return str(folder)


def test_inspect_and_read_a_folder(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 6, 4, 3), dtype="uint8")
    folder = save_pngs(tmp_path / "images", images)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    info = reference.inspect_reference(folder)
    assert info["kind"] == "images" and info["format"] == "folder"
    assert info["num_images"] == 5 and info["image_shape"] == (6, 4, 3)
    batches = list(
        reference.iter_reference_images(
            folder, info, batch_size=2, max_images=3
        )
    )
    assert [b.shape for b in batches] == [(2, 6, 4, 3), (1, 6, 4, 3)]
    np.testing.assert_array_equal(np.concatenate(batches), images[:3])


def test_inspect_and_read_an_adm_npz(tmp_path):
    images = np.arange(4 * 2 * 2 * 3, dtype="uint8").reshape(4, 2, 2, 3)
    path = str(tmp_path / "ref.npz")
    np.savez(path, arr_0=images, mu=np.zeros(3), sigma=np.eye(3))
    info = reference.inspect_reference(path, ["fd-effnet"])
    assert (info["kind"], info["format"], info["num_images"]) == (
        "images",
        "npz",
        4,
    )
    assert "not used" in info["note"]
    batches = list(reference.iter_reference_images(path, info, 3))
    assert [len(b) for b in batches] == [3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), images)


def test_folder_images_of_another_size_are_refused(tmp_path):
    folder = tmp_path / "images"
    save_pngs(folder, np.zeros((2, 4, 4, 3), "uint8"))
    Image.fromarray(np.zeros((5, 4, 3), "uint8")).save(folder / "002.png")
    info = reference.inspect_reference(str(folder))
    with pytest.raises(ValueError, match="002.png is 4x5 but 000.png is 4x4"):
        list(reference.iter_reference_images(str(folder), info, 8))


def test_bad_references_are_refused_with_the_fix(tmp_path):
    images = np.zeros((4, 8, 8, 3), "uint8")
    cases = {
        "float": ({"arr_0": images.astype("float32")}, "dtype float32"),
        "nchw": ({"arr_0": images.transpose(0, 3, 1, 2)}, "NCHW: convert"),
        "gray": ({"arr_0": images[..., :1]}, "Grayscale: repeat"),
        "rank": ({"arr_0": images[0]}, r"shape \(8, 8, 3\) \(rank 3\)"),
        "keys": ({"images": images}, r"neither images.*keys are \['images'\]"),
        "empty": ({"arr_0": images[:0]}, "holds 0 image"),
        "one": ({"arr_0": images[:1]}, "holds 1 image.*at least 2"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        expected = f"Reference '{path}': .*{message}"
        with pytest.raises(ValueError, match=expected):
            reference.inspect_reference(str(path))
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not an .npz file"):
        reference.inspect_reference(str(tmp_path / "text.npz"))
    with pytest.raises(ValueError, match="no such file or folder"):
        reference.inspect_reference(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="the folder holds no image files"):
        reference.inspect_reference(str(tmp_path / "empty"))
    single = save_pngs(tmp_path / "single", images[:1])
    with pytest.raises(ValueError, match="holds 1 image"):
        reference.inspect_reference(single)


def test_statistics_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    effnet = (rng.normal(size=(3,)), rng.normal(size=(3, 3)))
    inception = (rng.normal(size=(2,)), rng.normal(size=(2, 2)))
    both = str(tmp_path / "both.npz")
    reference.write_reference_stats(
        both,
        {"EffNetLite0": effnet, "InceptionV3": inception},
        7,
        verbose=False,
    )
    for name, (mu, sigma) in (
        ("EffNetLite0", effnet),
        ("InceptionV3", inception),
    ):
        read_mu, read_sigma = reference.read_reference_stats(both, name)
        np.testing.assert_array_equal(read_mu, mu)
        np.testing.assert_array_equal(read_sigma, sigma)
    with np.load(both) as data:
        assert int(data["num_images"]) == 7
        assert "mu" not in data.files  # plain keys only for one extractor
    assert reference.inspect_reference(both, ["fd-effnet", "fid"]) == {
        "kind": "stats",
        "format": "npz",
    }

    one = str(tmp_path / "one.npz")
    reference.write_reference_stats(
        one, {"EffNetLite0": effnet}, 7, verbose=False
    )
    with np.load(one) as data:
        assert str(data["feature_extractor"]) == "EffNetLite0"
        np.testing.assert_array_equal(data["mu"], effnet[0])
    with pytest.raises(
        ValueError,
        match=r"no InceptionV3 statistics \(it "
        r"has: \['EffNetLite0', 'EffNetLite0'\]\)",
    ):
        reference.read_reference_stats(one, "InceptionV3")


def test_statistics_files_serve_only_their_metrics(tmp_path):
    rng = np.random.default_rng(2)
    stats = (rng.normal(size=(3,)), np.eye(3))
    path = str(tmp_path / "stats.npz")
    reference.write_reference_stats(
        path, {"EffNetLite0": stats}, 5, verbose=False
    )
    with pytest.raises(ValueError, match="no InceptionV3 statistics"):
        reference.inspect_reference(path, ["fd-effnet", "fid"])
    with pytest.raises(ValueError, match="precision-recall needs reference"):
        reference.inspect_reference(path, ["precision-recall"])
    with pytest.raises(ValueError, match="is a statistics file already"):
        reference.inspect_reference(path, ["fd-effnet"], write_stats=True)
    unlabelled = str(tmp_path / "adm.npz")
    np.savez(unlabelled, mu=stats[0], sigma=stats[1])
    with pytest.warns(UserWarning, match="unlabelled statistics"):
        mu, _ = reference.read_reference_stats(unlabelled, "InceptionV3")
    np.testing.assert_array_equal(mu, stats[0])
