"""Unit tests of `StepHistory`, `LatentCollapseMonitor`, `SampleGrid` and
`TimeLimit`, with fake logs and fake models (no training)."""

import types
import warnings

import numpy as np
import pytest
from PIL import Image

from keras_dsd.callbacks import LatentCollapseMonitor
from keras_dsd.callbacks import SampleGrid
from keras_dsd.callbacks import StepHistory
from keras_dsd.callbacks import TimeLimit
from keras_dsd.callbacks import time_limit


def _running_means(values):
    """What Keras logs for per-step `values`: the epoch's running mean."""
    return np.cumsum(values) / np.arange(1, len(values) + 1)


def _feed(monitor, epochs, steps_per_execution=1):
    """Feeds `epochs` (lists of per-step `(rank, std)`) as Keras would:
    running means, one call per `steps_per_execution` steps."""
    monitor.set_model(types.SimpleNamespace(stop_training=False))
    for epoch, steps in enumerate(epochs):
        monitor.on_epoch_begin(epoch)
        ranks = _running_means([r for r, _ in steps])
        stds = _running_means([s for _, s in steps])
        for end in range(
            steps_per_execution - 1, len(steps), steps_per_execution
        ):
            monitor.on_train_batch_end(
                end,
                {
                    "latent_effective_rank": ranks[end],
                    "latent_std": stds[end],
                    "loss": 1.0,
                },
            )
    return monitor


@pytest.mark.backend_independent
def test_monitor_recovers_per_step_values_from_running_means():
    rng = np.random.default_rng(0)
    epochs = [
        list(zip(rng.uniform(3, 4, 7), rng.uniform(0.4, 0.5, 7)))
        for _ in range(2)
    ]
    monitor = _feed(LatentCollapseMonitor(reference_steps=3), epochs)
    expected_rank = [r for steps in epochs for r, _ in steps]
    np.testing.assert_allclose(
        monitor.values["latent_effective_rank"], expected_rank, atol=1e-9
    )
    # Reference: the mean of the first 3 per-step values.
    np.testing.assert_allclose(
        monitor.references["latent_std"],
        np.mean([s for _, s in epochs[0][:3]]),
        atol=1e-12,
    )
    # Two steps per call: one reading per call, the mean of its two steps.
    monitor = _feed(LatentCollapseMonitor(), epochs[:1], steps_per_execution=2)
    ranks = [r for r, _ in epochs[0]]
    np.testing.assert_allclose(
        monitor.values["latent_effective_rank"],
        [np.mean(ranks[0:2]), np.mean(ranks[2:4]), np.mean(ranks[4:6])],
        atol=1e-9,
    )


@pytest.mark.backend_independent
def test_monitor_fires_on_a_falling_std_with_a_steady_rank():
    # `naive`'s collapse: latent_std 0.45 -> 0.016 while the rank stays 5.5.
    # Keras' running mean of the std would still be 0.07 after 40 steps and
    # the monitor must not need it to fall that far.
    steps = [(5.5, 0.45)] * 10 + [(5.5, 0.016)] * 30
    monitor = LatentCollapseMonitor(reference_steps=10, patience=5)
    with pytest.warns(RuntimeWarning, match=r"latent_std=0.016 stayed below"):
        _feed(monitor, [steps])
    assert monitor.alarmed
    assert [a["metric"] for a in monitor.alarms] == ["latent_std"]
    alarm = monitor.alarms[0]
    # Low from step 11 on; the 5th low reading is step 15.
    assert alarm["step"] == 15
    np.testing.assert_allclose(alarm["threshold"], 0.2 * 0.45)
    np.testing.assert_allclose(alarm["value"], 0.016, atol=1e-9)


@pytest.mark.backend_independent
def test_monitor_fires_on_a_falling_rank_and_stops_training():
    # `decoupled`'s collapse: the rank falls to about 1 of at most c - 1.
    steps = [(5.1, 0.43)] * 10 + [(1.03, 0.40)] * 10
    monitor = LatentCollapseMonitor(patience=3, stop_training=True)
    with pytest.warns(RuntimeWarning, match="latent_effective_rank"):
        _feed(monitor, [steps[:12], steps[12:]])
    assert [a["metric"] for a in monitor.alarms] == ["latent_effective_rank"]
    assert monitor.alarms[0]["step"] == 13  # readings 11, 12 (epoch 1), 13
    assert monitor.model.stop_training


@pytest.mark.backend_independent
def test_monitor_stays_silent_for_a_healthy_run_and_a_short_dip():
    # dsd in the study: the rank dips to 0.46 of its start, std grows.
    rng = np.random.default_rng(1)
    ranks = np.concatenate(
        [np.full(10, 5.1), np.full(15, 2.37), rng.uniform(4, 5, 30)]
    )
    stds = np.linspace(0.43, 0.91, len(ranks))
    # A 4-step dip under the threshold, shorter than the patience.
    ranks[30:34] = 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor = _feed(
            LatentCollapseMonitor(patience=5), [list(zip(ranks, stds))]
        )
    assert not monitor.alarmed and monitor.alarms == []
    assert len(monitor.values["latent_std"]) == len(ranks)


@pytest.mark.backend_independent
def test_monitor_absolute_thresholds_and_missing_metrics():
    # With `min_rank`, the alarm can fire before the reference is known.
    monitor = LatentCollapseMonitor(
        min_rank=2.0, patience=2, reference_steps=50
    )
    with pytest.warns(RuntimeWarning, match="below 2"):
        _feed(monitor, [[(1.5, 0.4)] * 3])
    assert monitor.alarms[0]["step"] == 2
    # Logs without the latent metrics (another model) are ignored.
    monitor = LatentCollapseMonitor()
    monitor.set_model(types.SimpleNamespace(stop_training=False))
    monitor.on_epoch_begin(0)
    monitor.on_train_batch_end(0, {"loss": 1.0})
    assert monitor.values == {"latent_effective_rank": [], "latent_std": []}


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rank_fraction": 1.5}, "rank_fraction"),
        ({"std_fraction": -0.1}, "std_fraction"),
        ({"patience": 0}, "patience"),
        ({"reference_steps": 2.5}, "reference_steps"),
    ],
)
def test_monitor_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LatentCollapseMonitor(**kwargs)


class FakeGenerator:
    """Records `generate` calls; returns a distinct image per label."""

    def __init__(self):
        self.calls = []
        self.stop_training = False

    def generate(self, class_labels, **kwargs):
        self.calls.append((list(class_labels), kwargs))
        labels = np.asarray(class_labels)
        return np.broadcast_to(
            (labels * 40).astype("uint8")[:, None, None, None],
            (len(labels), 4, 4, 3),
        ).copy()


def test_sample_grid_writes_every_n_epochs(tmp_path):
    model = FakeGenerator()
    callback = SampleGrid(
        str(tmp_path / "grid_{epoch:02d}.png"),
        class_labels=[0, 1, 2, 3],
        rows=2,
        every_n_epochs=2,
        num_steps=3,
        seed=5,
    )
    callback.set_model(model)
    for epoch in range(4):
        callback.on_epoch_end(epoch)
    # Epochs 2 and 4 (1-based), with the same seed each time.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "grid_02.png",
        "grid_04.png",
    ]
    assert (
        model.calls
        == [([0, 1, 2, 3], {"num_steps": 3, "sampler": "heun", "seed": 5})] * 2
    )
    with Image.open(tmp_path / "grid_02.png") as image:
        grid = np.asarray(image)
    # 2 rows x 2 columns of 4 px images with a 2 px border: 14 x 14.
    assert grid.shape[:2] == (14, 14)
    # The image of label 3 (value 120) sits bottom-right.
    assert grid[8:12, 8:12].min() == grid[8:12, 8:12].max() == 120


@pytest.mark.backend_independent
def test_time_limit_stops_after_the_budget(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time_limit.time, "monotonic", lambda: now[0])
    model = types.SimpleNamespace(stop_training=False)
    callback = TimeLimit(minutes=0.5)
    callback.set_model(model)
    callback.on_train_begin()
    now[0] = 129.0
    callback.on_train_batch_end(0)
    assert not model.stop_training and callback.stopped_at_step is None
    now[0] = 130.5  # 30.5 s > 0.5 min
    callback.on_train_batch_end(1)
    assert model.stop_training and callback.stopped_at_step == 1


def test_step_history_per_step_and_per_call_values():
    # Two epochs of logged running means; the second fed two steps per
    # call, as Keras does with steps_per_execution=2. The expected values
    # are the per-step values themselves, and the pair means per call.
    first = [2.0, 4.0, 9.0]
    second = [1.0, 3.0, 10.0, 20.0]
    history = StepHistory(keys=["loss"])
    history.set_model(types.SimpleNamespace(stop_training=False))
    history.on_epoch_begin(0)
    for batch, mean in enumerate(_running_means(first)):
        history.on_train_batch_end(batch, {"loss": mean, "other": 0.0})
    history.on_epoch_begin(1)
    means = _running_means(second)
    for batch in (1, 3):
        history.on_train_batch_end(batch, {"loss": means[batch]})
    np.testing.assert_allclose(
        history.history["loss"], [2.0, 4.0, 9.0, 2.0, 15.0], atol=1e-12
    )
    assert history.steps == 7
    assert set(history.history) == {"loss"}
