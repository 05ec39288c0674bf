"""examples/train_imagenet.py end to end on a generated image folder."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import keras
import multi_process
import numpy as np
import pytest
from PIL import Image

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "examples", "train_imagenet.py"
)


BACKEND = keras.backend.backend()


def load_example():
    spec = importlib.util.spec_from_file_location("train_imagenet", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.large(except_backend="torch")
def test_smoke_run_then_resume_longer(tmp_path):
    example = load_example()
    out = str(tmp_path / "run")
    assert example.main(["--smoke", "--output-dir", out]) == 0
    with open(os.path.join(out, "checkpoints", "checkpoint.json")) as f:
        assert json.load(f)["batches"] == 4
    for name in ("loop_00001.png", "loop_00002.png"):
        with Image.open(os.path.join(out, "samples", name)) as grid:
            assert grid.mode == "RGB" and grid.size[0] > grid.size[1]
    for name in (
        "run_config.json",
        "history.csv",
        "preset/config.json",
        "preset/task.weights.h5",
    ):
        assert os.path.exists(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "tensorboard"))

    # The same command with more steps continues from the checkpoint: two
    # more loops, appended to the history.
    assert example.main(["--smoke", "--output-dir", out, "--steps", "8"]) == 0
    with open(os.path.join(out, "checkpoints", "checkpoint.json")) as f:
        state = json.load(f)
    assert state["batches"] == 8 and state["epoch"] == 4
    with open(os.path.join(out, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert all(np.isfinite(float(r["loss"])) for r in rows)


def test_another_recipe_never_reuses_an_output_dir(tmp_path, capsys):
    # A previous run's files (as written by a run with the default learning
    # rate): a restart with another learning rate must not touch them.
    example = load_example()
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    previous = {"learning_rate": 0.0001, "preset": "dsd_tiny"}
    (out / "run_config.json").write_text(json.dumps(previous))
    (out / "checkpoints" / "notes.txt").write_text("earlier run")
    code = example.main(
        ["--smoke", "--output-dir", str(out), "--learning-rate", "0.1"]
    )
    assert code == 2
    assert "learning_rate: 0.0001 -> 0.1" in capsys.readouterr().err
    assert json.loads((out / "run_config.json").read_text()) == previous
    assert (out / "checkpoints" / "notes.txt").read_text() == "earlier run"
    assert sorted(os.listdir(out)) == [
        "checkpoints",
        "run_config.json",
        "smoke_data",
    ]

    stranger = tmp_path / "other"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert example.main(["--smoke", "--output-dir", str(stranger)]) == 2
    assert "is not empty and holds no run_config.json" in (
        capsys.readouterr().err
    )
    assert (stranger / "notes.txt").read_text() == "mine"


def _folder(root, num_classes=3, per_class=2):
    for label in range(num_classes):
        folder = root / f"c{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40, 36), (40 * label, 0, 0)).save(
                folder / f"{i}.png"
            )
    return str(root)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--image-size", "36"],
            "--image-size 36 is not divisible by the patch size 8 of dsd_tiny",
        ),
        (["--num-classes", "10"], "The data has 3 classes but the model 10"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, capsys, extra, message):
    data = _folder(tmp_path / "data")
    argv = [
        "--source",
        "folder",
        "--data-dir",
        data,
        "--preset",
        "dsd_tiny",
        "--image-size",
        "32",
        "--num-classes",
        "3",
        "--global-batch-size",
        "2",
        "--steps",
        "1",
        "--output-dir",
        str(tmp_path / "out"),
    ] + extra
    assert load_example().main(argv) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / "checkpoints")


def test_missing_data_dir_and_bad_flags(tmp_path, capsys):
    example = load_example()
    argv = [
        "--source",
        "folder",
        "--data-dir",
        str(tmp_path / "nowhere"),
        "--output-dir",
        str(tmp_path / "out"),
    ]
    assert example.main(argv) == 2
    assert "nowhere" in capsys.readouterr().err
    for bad in (
        ["--sampler-typo"],
        ["--preset", "dsd_xl"],
        ["--global-batch-size", "6", "--grad-accum", "4"],
        ["--source", "folder"],
    ):
        with pytest.raises(SystemExit) as info:
            example.parse_args(bad)
        assert info.value.code == 2


def _h5_arrays(path):
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: (
                arrays.__setitem__(name, item[()])
                if isinstance(item, h5py.Dataset)
                else None
            )
        )
    return arrays


def _launch_smoke(out, *extra):
    results = multi_process.launch(
        BACKEND,
        EXAMPLE,
        ["--smoke", "--output-dir", str(out), *extra],
        timeout=600,
    )
    for code, output in results:
        assert code == 0, output[-3000:]
    return results


@pytest.mark.large
def test_smoke_run_on_two_processes_then_resume(tmp_path):
    # The launch users run (torchrun / KERAS_DISTRIBUTION_* / TF_CONFIG),
    # with no other flag: the chief writes one set of files. A time limit
    # far away has the processes agree after every batch not to stop.
    whole = tmp_path / "whole"
    _launch_smoke(whole, "--max-minutes", "600")
    with open(whole / "checkpoints" / "checkpoint.json") as f:
        assert json.load(f)["batches"] == 4
    for name in ("loop_00001.png", "loop_00002.png"):
        with Image.open(whole / "samples" / name) as grid:
            assert grid.mode == "RGB" and grid.size[0] > grid.size[1]
    with open(whole / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert os.path.exists(whole / "preset" / "task.weights.h5")

    # Stopped after its first loop's checkpoint, then run again for 4
    # steps: both processes resume from step 2 and end with the weights
    # of the uninterrupted run.
    resumed = tmp_path / "resumed"
    _launch_smoke(resumed, "--steps", "2")
    _launch_smoke(resumed, "--steps", "4")
    name = "ckpt-000000004.weights.h5"
    expected = _h5_arrays(whole / "checkpoints" / name)
    actual = _h5_arrays(resumed / "checkpoints" / name)
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, atol=1e-5, err_msg=key)


def test_processes_that_find_different_checkpoints_stop(tmp_path):
    # Process 0 finds the checkpoint of step 2; process 1 (simulated: an
    # output directory it does not share) finds none.
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "ckpt-000000002.weights.h5").write_bytes(b"")
    state = {"epoch": 1, "batches": 2, "weights": "ckpt-000000002.weights.h5"}
    (checkpoints / "checkpoint.json").write_text(json.dumps(state))

    class TwoProcesses:
        def process_values(self, value):
            return [value, -1.0]

    example = load_example()
    with pytest.raises(ValueError, match="process 0: 2, process 1: none"):
        example.agreed_state(TwoProcesses(), str(checkpoints))

    class Agreeing:
        def process_values(self, value):
            return [value, value]

    assert example.agreed_state(Agreeing(), str(checkpoints)) == state


def test_processes_with_different_flags_stop():
    # Process 1 (simulated: what it sends is recorded first) was given
    # another --learning-rate and --data-dir; only the first is refused.
    example = load_example()
    mine = example.parse_args(["--smoke", "--output-dir", "o"])
    theirs = example.parse_args(
        ["--smoke", "--output-dir", "o", "--learning-rate", "0.5"]
    )
    theirs.data_dir = "/elsewhere"

    class Recorder:
        process_index, sent = 1, []

        def process_values(self, value):
            self.sent.append(value)
            return [value, value + 1]  # as if all differed: sends them all

    with pytest.raises(ValueError):
        example.check_same_flags(Recorder(), theirs)

    class TwoProcesses:
        process_index, received = 0, iter(Recorder.sent)

        def process_values(self, value):
            return [value, next(self.received)]

    with pytest.raises(ValueError) as error:
        example.check_same_flags(TwoProcesses(), mine)
    message = str(error.value)
    assert "were started with different flags: --learning-rate" in message
    assert message.count("--") == 1, message

    class Agreeing:
        def process_values(self, value):
            return [value, value]

    example.check_same_flags(Agreeing(), theirs)


# The same with 2 real processes (PyTorch: about 15 s).
@pytest.mark.large
def test_processes_started_with_different_flags_stop(tmp_path):
    # One command per process (as a hand-written launch script might),
    # differing in --learning-rate: every process refuses to train, naming
    # the flag, before writing anything.
    out = str(tmp_path / "out")
    results = multi_process.launch_each(
        BACKEND,
        EXAMPLE,
        multi_process.plain_environments(BACKEND),
        timeout=300,
        arguments=[
            ["--smoke", "--output-dir", out, "--learning-rate", rate]
            for rate in ("0.1", "0.2")
        ],
    )
    for (code, output), rate in zip(results, ("0.1", "0.2")):
        assert code == 2, output[-3000:]
        assert "were started with different flags" in output, output
        assert "--learning-rate (this process" in output, output
        assert f"{rate})" in output, output
        assert "--steps" not in output.split("different flags")[-1], output
    assert not os.path.exists(os.path.join(out, "checkpoints"))


def _complete_checkpoints(checkpoints):
    """The steps of the weights files in `checkpoints`, each checked to
    be a complete HDF5 file; the state file must name one of them."""
    names = sorted(
        n
        for n in os.listdir(checkpoints)
        if n.startswith("ckpt-") and n.endswith(".weights.h5")
    )
    for name in names:
        assert _h5_arrays(checkpoints / name), name  # opens, holds weights
    with open(checkpoints / "checkpoint.json") as f:
        state = json.load(f)
    assert state["weights"] in names, (state, names)
    return state["batches"], [int(n[5:14]) for n in names]


@pytest.mark.skipif(BACKEND != "torch", reason="torchrun's processes")
@pytest.mark.large
def test_killed_process_then_relaunch_resumes(tmp_path):
    # A 12-step run on 2 processes, checkpoints every 2 steps. Process 1
    # is killed (SIGKILL, a crashed host) once the first checkpoint is
    # written: the launch ends with an error instead of hanging. Launched
    # again with the same flags, it resumes from the last complete
    # checkpoint and ends with the weights of an uninterrupted run.
    import psutil

    args = ["--steps", "12"]
    whole = tmp_path / "whole"
    _launch_smoke(whole, *args)
    killed = tmp_path / "killed"
    state_file = killed / "checkpoints" / "checkpoint.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        EXAMPLE,
        "--smoke",
        *args,
        "--output-dir",
        str(killed),
    ]
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    with tempfile.TemporaryFile("w+") as log:
        launcher = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 300
            while not state_file.exists() and launcher.poll() is None:
                assert time.monotonic() < deadline, "no checkpoint written"
                time.sleep(0.1)
            workers = [
                p
                for p in psutil.Process(launcher.pid).children(recursive=True)
                if p.environ().get("RANK") == "1"
            ]
            assert len(workers) == 1 and launcher.poll() is None, workers
            workers[0].kill()
            killed_at = time.monotonic()
            code = launcher.wait(timeout=180)
            waited = time.monotonic() - killed_at
        finally:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
        log.seek(0)
        output = log.read()
    assert code != 0, output[-3000:]
    assert waited < 120, waited
    assert "Trained 12 steps" not in output, output[-3000:]
    batches, steps = _complete_checkpoints(killed / "checkpoints")
    assert 2 <= batches < 12 and batches in steps, (batches, steps)

    results = _launch_smoke(killed, *args)
    assert f"(step {batches})" in results[0][1], results[0][1][-3000:]
    assert _complete_checkpoints(killed / "checkpoints")[0] == 12
    name = "ckpt-000000012.weights.h5"
    expected = _h5_arrays(whole / "checkpoints" / name)
    actual = _h5_arrays(killed / "checkpoints" / name)
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, atol=1e-5, err_msg=key)
