import json
import os

import keras
import numpy as np
import pytest

from keras_dsd.callbacks import TrainingCheckpoint
from keras_dsd.models.dsd.dsd_image_generator import DSDImageGenerator
from keras_dsd.testing import test_utils

# 2 epochs of 2 steps: the straight run, and a run that crashes after
# epoch 1 and is restarted. Eager steps keep the file fast on TensorFlow
# and PyTorch; JAX compiles eager ops one by one, so there one compiled
# step, shared by the tests through the compilation cache, is faster.
EPOCHS = 2
COMPILED = keras.backend.backend() == "jax"
IMAGES = test_utils.random_images(4)
LABELS = test_utils.random_labels(4)


class Crash(keras.callbacks.Callback):
    """Raises at the end of an epoch, after the checkpoint is written."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise RuntimeError("simulated crash")


def _model(weights_seed=1, accumulation=None, steps_per_execution=1):
    backbone = test_utils.randomize_weights(
        test_utils.tiny_backbone(), seed=weights_seed, stddev=0.2
    )
    model = DSDImageGenerator(
        backbone, teacher_decay=0.5, ema_decay=0.9, seed=3
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=1e-2, gradient_accumulation_steps=accumulation
        ),
        jit_compile=COMPILED,
        run_eagerly=not COMPILED,
        steps_per_execution=steps_per_execution,
    )
    return model


def _fit(model, callbacks, epochs=EPOCHS):
    return model.fit(
        IMAGES,
        LABELS,
        batch_size=2,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )


def _state(model):
    return [test_utils.to_numpy(v) for v in model.weights] + [
        test_utils.to_numpy(v) for v in model.optimizer.variables
    ]


# Three fits: 16 s on JAX, 5 s on TF, 2 s on PyTorch; the `(2, None)`
# case below covers the resume path on JAX and TF in the fast tier.
@pytest.mark.large(except_backend="torch")
def test_resume_after_a_crash_matches_a_straight_run(tmp_path):
    straight = _model()
    _fit(straight, [])

    directory = str(tmp_path / "backup")
    crashed = _model()
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(crashed, [TrainingCheckpoint(directory), Crash(epoch=1)])
    state = TrainingCheckpoint.read_state(directory)
    assert state["epoch"] == 1 and state["step"] == 2
    assert state["batches"] == 2

    # A new process would start from fresh (here: different) weights.
    resumed = _model(weights_seed=7)
    checkpoint = TrainingCheckpoint(directory)
    history = _fit(resumed, [checkpoint])
    assert checkpoint.restored_state["epoch"] == 1
    assert len(history.history["loss"]) == EPOCHS - 1  # epoch 2 only
    assert int(test_utils.to_numpy(resumed.optimizer.iterations)) == 4
    # Weights, teacher, EMA, optimizer moments and step: same as straight.
    # Tolerance: the same float32 ops in the same order; 1e-6 allows for
    # reordered reductions.
    for actual, expected in zip(_state(resumed), _state(straight)):
        np.testing.assert_allclose(actual, expected, atol=1e-6, rtol=0)
    # The random-number state went on too: the next draw is the same.
    seeds = [
        test_utils.to_numpy(m.seed_generator.state) for m in (resumed, straight)
    ]
    np.testing.assert_array_equal(*seeds)


def test_a_crash_while_writing_keeps_the_last_checkpoint(tmp_path):
    directory = str(tmp_path / "backup")
    model = _model()
    checkpoint = TrainingCheckpoint(directory)
    _fit(model, [checkpoint], epochs=1)
    before = TrainingCheckpoint.read_state(directory)
    weights_file = os.path.join(directory, before["weights"])
    with open(weights_file, "rb") as f:
        saved_bytes = f.read()

    original = model.save_weights

    def dies_half_way(path, overwrite=True):
        original(path, overwrite=overwrite)
        with open(path, "r+b") as f:
            f.truncate(100)
        raise KeyboardInterrupt("killed while writing")

    model.save_weights = dies_half_way
    with pytest.raises(KeyboardInterrupt):
        _fit(model, [checkpoint], epochs=2)
    # The state still points to the complete previous file, untouched, and
    # no partial file sits under a checkpoint name.
    assert TrainingCheckpoint.read_state(directory) == before
    with open(weights_file, "rb") as f:
        assert f.read() == saved_bytes
    names = [n for n in os.listdir(directory) if n.startswith("ckpt-")]
    assert names == [before["weights"]]

    restarted = _model(weights_seed=7)
    restarted_checkpoint = TrainingCheckpoint(directory)
    history = _fit(restarted, [restarted_checkpoint], epochs=2)
    assert restarted_checkpoint.restored_state["epoch"] == 1
    assert len(history.history["loss"]) == 1


def test_keeps_the_newest_files(tmp_path):
    directory = str(tmp_path / "backup")
    _fit(_model(), [TrainingCheckpoint(directory, keep=2)], epochs=3)
    names = sorted(n for n in os.listdir(directory) if n.startswith("ckpt"))
    assert names == ["ckpt-000000004.weights.h5", "ckpt-000000006.weights.h5"]
    with open(os.path.join(directory, "checkpoint.json")) as f:
        assert json.load(f)["weights"] == "ckpt-000000006.weights.h5"


def test_read_state_and_errors(tmp_path):
    assert TrainingCheckpoint.read_state(str(tmp_path)) is None
    with open(tmp_path / "checkpoint.json", "w") as f:
        json.dump(
            {
                "epoch": 1,
                "step": 2,
                "weights": "gone.weights.h5",
                "seed_states": [],
            },
            f,
        )
    with pytest.raises(ValueError, match="gone.weights.h5, which is missing"):
        TrainingCheckpoint.read_state(str(tmp_path))
    with pytest.raises(ValueError, match="`keep` must be >= 1"):
        TrainingCheckpoint(str(tmp_path), keep=0)


# 6 distinct batches of 2 images: a data stream that can start anywhere.
STREAM_IMAGES = test_utils.random_images(12, seed=5)
STREAM_LABELS = test_utils.random_labels(12, seed=5)


def _stream(start):
    """Batches `start, start + 1, ...` of the stream, as a resumable input
    pipeline gives them (`ImageFolder.as_dataset(start_step=...)`)."""
    step = start
    while True:
        index = 2 * (step % 6)
        yield (
            STREAM_IMAGES[index : index + 2],
            STREAM_LABELS[index : index + 2],
        )
        step += 1


@pytest.mark.parametrize(
    "steps_per_execution,accumulation",
    [
        (2, None),
        # 7-14 s on TF and JAX, where the case above covers the resume
        # path in the fast tier.
        pytest.param(1, 2, marks=pytest.mark.large(except_backend="torch")),
    ],
)
def test_resume_continues_the_data_stream_at_the_right_batch(
    tmp_path, steps_per_execution, accumulation
):
    if steps_per_execution > 1 and keras.backend.backend() == "torch":
        pytest.skip("Keras refuses steps_per_execution > 1 on PyTorch.")
    # 3 epochs of 2 batches; the crash comes after epoch 2, i.e. after 4
    # batches (with steps_per_execution=2, Keras reports them in 2 calls;
    # with accumulation, they make 2 optimizer steps). The resumed run
    # reads the stream from the checkpoint's batch count.
    options = {
        "accumulation": accumulation,
        "steps_per_execution": steps_per_execution,
    }
    fit = {"steps_per_epoch": 2, "epochs": 3, "verbose": 0, "shuffle": False}
    straight = _model(**options)
    straight.fit(_stream(0), **fit)

    directory = str(tmp_path / "backup")
    crashed = _model(**options)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit(
            _stream(0),
            callbacks=[TrainingCheckpoint(directory), Crash(epoch=2)],
            **fit,
        )
    state = TrainingCheckpoint.read_state(directory)
    assert state["batches"] == 4
    assert state["step"] == 4 // (accumulation or 1)

    resumed = _model(weights_seed=7, **options)
    checkpoint = TrainingCheckpoint(directory)
    resumed.fit(_stream(state["batches"]), callbacks=[checkpoint], **fit)
    assert checkpoint.batches == 6
    for actual, expected in zip(_state(resumed), _state(straight)):
        np.testing.assert_allclose(actual, expected, atol=1e-6, rtol=0)
