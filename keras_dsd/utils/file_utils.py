"""Writing files so that a crash never leaves a partial file in place."""

import json
import os
import secrets


def atomic_write(path, write_fn):
    """Calls `write_fn(tmp_path)`, then renames the temporary file to `path`.

    The temporary file sits in the same folder (so the rename is atomic) and
    keeps the full extension of `path` (Keras insists on `.weights.h5`). A
    crash leaves at most a `.tmp-*` file, never a partial file under `path`;
    an existing file at `path` stays intact until the new one is complete.
    Parent folders are created. The file's mode follows the user's umask,
    as for any file that `open` creates. Returns `path`.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(path)
    suffix = "." + name.split(".", 1)[1] if "." in name else ""
    # `os.open` with mode 0o666 applies the umask (`tempfile.mkstemp`
    # would make the file 0o600 whatever the umask is).
    tmp_path = os.path.join(directory, f".tmp-{secrets.token_hex(8)}{suffix}")
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write_fn(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return path


def write_json(path, value, default=None):
    """Writes `value` as indented JSON (plus a final newline), atomically.

    `default` is passed to `json.dump` for objects it cannot serialise.
    Returns `path`.
    """

    def write(tmp_path):
        with open(tmp_path, "w") as f:
            json.dump(value, f, indent=2, default=default)
            f.write("\n")

    return atomic_write(path, write)


def save_model(model, path):
    """`model.save(path)` (a `.keras` file), atomically: a crash during the
    save leaves any earlier file at `path` intact. Returns `path`."""

    def write(tmp_path):
        os.remove(tmp_path)  # let Keras create the file itself
        model.save(tmp_path)

    return atomic_write(path, write)
