"""The files of an evaluation: atomic `.npz` and JSON writes, `.npz`
headers read without loading the arrays, and content digests."""

import hashlib
import os
import zipfile

import numpy as np

from keras_dsd.utils import file_utils


def save_npz(path, **arrays):
    """Writes `np.savez(path, **arrays)` atomically.

    A crash leaves no partial file under `path` (see
    `keras_dsd.utils.file_utils.atomic_write`). The file keeps the exact
    name given: `np.savez` would append `.npz` to a temporary name, so it
    writes through a file handle.

    Args:
        path: string. The `.npz` file to write.
        **arrays: the arrays, by key.

    Returns:
        `path`.
    """

    def write(tmp_path):
        with open(tmp_path, "wb") as f:
            np.savez(f, **arrays)

    return file_utils.atomic_write(path, write)


def write_json(path, value):
    """Writes `value` as indented JSON, atomically; numpy scalars and arrays
    become plain numbers and lists.

    Args:
        path: string. The JSON file to write.
        value: the JSON-like value (dicts, lists, numbers, numpy values).

    Returns:
        `path`.
    """
    return file_utils.write_json(path, value, default=_json_default)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def npz_headers(path):
    """Reads the shape and dtype of every array of an `.npz`, not the data.

    A 50,000-image `.npz` is checked in milliseconds this way.

    Args:
        path: string. An `.npz` file.

    Returns:
        A dict `{key: (shape, dtype)}`, `shape` a tuple, `dtype` a
        `np.dtype`.
    """
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    header = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    header = np.lib.format.read_array_header_2_0(f)
                else:  # (3, 0): rare; read the array itself.
                    with np.load(path) as data:
                        array = data[name[:-4]]
                    header = (array.shape, False, array.dtype)
            headers[name[:-4]] = (tuple(header[0]), np.dtype(header[2]))
    return headers


def file_digest(path):
    """The sha256 of a file, or of the config and weight files of a folder.

    A preset folder's `metadata.json` is left out, so that the digest
    names the network, not when it was saved.

    Args:
        path: string. A file (e.g. a `.keras` model) or a folder (e.g. a
            preset written by `save_to_preset`).

    Returns:
        The hex digest, a string.
    """
    digest = hashlib.sha256()
    paths = [path]
    if os.path.isdir(path):
        paths = [
            os.path.join(path, name)
            for name in sorted(os.listdir(path))
            if name.endswith((".json", ".h5")) and name != "metadata.json"
        ]
    for file_path in paths:
        digest.update(os.path.basename(file_path).encode())
        with open(file_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
