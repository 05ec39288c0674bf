"""benchmarks/train_throughput.py: what `--fit` times, and its arguments."""

import sys

import keras
import pytest

import keras_dsd
from keras_dsd.testing import test_utils


@pytest.fixture(scope="module")
def train_throughput(load_benchmark):
    return load_benchmark("train_throughput")


@pytest.mark.large(except_backend="torch")
def test_fit_seconds_times_one_epoch_of_the_given_steps(train_throughput):
    model = keras_dsd.models.DSDImageGenerator(
        backbone=test_utils.tiny_backbone(), seed=0
    )
    model.compile()
    images = test_utils.random_images(2)
    labels = test_utils.random_labels(2)
    seconds = train_throughput.fit_seconds(model, images, labels, steps=3)
    # One optimizer update per step: the batch repeated 3 times, in
    # batches of the batch's size.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3
    assert seconds > 0
    seconds = train_throughput.fit_seconds(model, images, labels, steps=2)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 5


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be at least 1; got 0."),
        (
            ["--fit", "--warmup", "0"],
            "--warmup must be at least 1 with --fit; got 0.",
        ),
        (["--warmup", "-1"], "--warmup must be at least 0; got -1."),
    ],
)
def test_bad_step_counts_are_refused_before_any_work(
    train_throughput, monkeypatch, capsys, argv, message
):
    def no_model(*args, **kwargs):
        raise AssertionError("built a model for bad arguments")

    monkeypatch.setattr(train_throughput, "model_and_batch", no_model)
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        train_throughput.main()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
