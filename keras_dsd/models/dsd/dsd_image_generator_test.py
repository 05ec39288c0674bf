import os
import types

import keras
import numpy as np
import pytest

from keras_dsd.models.dsd.dsd_backbone import DSDBackbone
from keras_dsd.models.dsd.dsd_image_generator import DSDImageGenerator
from keras_dsd.models.dsd.dsd_presets import backbone_presets as presets
from keras_dsd.optimizers import AdamW
from keras_dsd.testing import test_utils

LOG_KEYS = {
    "loss",
    "reconstruction_loss",
    "diffusion_loss",
    "latent_std",
    "latent_effective_rank",
}
BACKEND = keras.backend.backend()


# Every fit uses batches of 2 images: uncompiled JAX compiles each op once
# per shape, so one batch shape keeps the whole file fast.
BATCH_SIZE = 2


def _data(num_images=BATCH_SIZE, seed=0):
    return (
        test_utils.random_images(num_images, seed=seed),
        test_utils.random_labels(num_images, seed=seed),
    )


def _random_backbone(seed=1):
    return test_utils.randomize_weights(
        test_utils.tiny_backbone(), seed=seed, stddev=0.2
    )


def _model(backbone=None, **kwargs):
    kwargs = {"teacher_decay": 0.5, "ema_decay": 0.9, "seed": 0, **kwargs}
    return DSDImageGenerator(backbone or _random_backbone(), **kwargs)


def _compile_fast(model, **kwargs):
    # One XLA compilation of the train step costs 10-30 s on a small CPU,
    # so most tests train eagerly; `trained` (below) covers the compiled
    # defaults.
    model.compile(jit_compile=False, run_eagerly=True, **kwargs)
    return model


def _fit(model, x, y=None, **kwargs):
    kwargs = {
        "batch_size": BATCH_SIZE,
        "epochs": 1,
        "verbose": 0,
        "shuffle": False,
        **kwargs,
    }
    return model.fit(x, y, **kwargs)


def _assert_finite_logs(history, diffusion_loss_weight=1.0):
    logs = {k: v[-1] for k, v in history.history.items()}
    assert LOG_KEYS <= set(logs)
    for key in LOG_KEYS:
        assert np.isfinite(logs[key]), (key, logs)
    # c = 4 channels, LayerNorm per token: the rank is at most c - 1 = 3.
    assert 1.0 - 1e-3 <= logs["latent_effective_rank"] <= 3.0 + 1e-3
    assert logs["latent_std"] > 0
    # One step: the logged loss is the sum of its two terms.
    np.testing.assert_allclose(
        logs["loss"],
        logs["reconstruction_loss"]
        + diffusion_loss_weight * logs["diffusion_loss"],
        rtol=1e-4,
    )
    return logs


def _weights_equal(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _numpy_ema(initial, updates, decay):
    """EMA with the warm-up `min(m, (1 + k) / (10 + k))` at update `k`."""
    ema = [w.astype("float64") for w in initial]
    for k, weights in enumerate(updates):
        d = min(decay, (1.0 + k) / (10.0 + k))
        ema = [d * s + (1.0 - d) * w for s, w in zip(ema, weights)]
    return ema


def _assert_weights_close(actual, expected, atol=1e-5):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, atol=atol, rtol=0)


class RecordWeights(keras.callbacks.Callback):
    """Records the trained network's weights after every batch."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(self.model.backbone.get_weights())


@pytest.fixture(scope="module")
def trained():
    """A model trained for one step with the `compile()` defaults (XLA on
    JAX and TensorFlow). Tests only read it."""
    keras.utils.set_random_seed(0)
    backbone = _random_backbone()
    initial = backbone.get_weights()
    model = _model(backbone)
    model.compile()
    images, labels = _data()
    traces = []
    train_step = model.train_step

    def counting_step(*args):
        traces.append(1)
        return train_step(*args)

    model.train_step = counting_step
    history = _fit(model, images, labels)
    del model.train_step
    return types.SimpleNamespace(
        model=model,
        history=history,
        traces=len(traces),
        initial=initial,
        images=images,
        labels=labels,
    )


@pytest.fixture
def trained_distinct(trained):
    """`trained.model` with teacher and sampling weights of their own, so
    that save/load tests can tell the three networks apart: the first
    step's learning rate is 0 (warm-up), so the step left all three equal.
    The fixture's weights are put back afterwards."""
    model = trained.model
    averages = (model.teacher_backbone, model.ema_backbone)
    kept = [network.get_weights() for network in averages]
    for seed, network in enumerate(averages):
        test_utils.randomize_weights(network, seed=10 + seed, stddev=0.2)
    yield model
    for network, weights in zip(averages, kept):
        network.set_weights(weights)


# === Construction ===


def test_networks_per_objective_and_teacher():
    backbone = test_utils.tiny_backbone()
    model = DSDImageGenerator(backbone)
    assert model.objective == "dsd" and model.teacher == "ema"
    assert isinstance(model.teacher_backbone, DSDBackbone)
    assert model.inference_backbone is model.ema_backbone
    # The copies start equal to the network but own separate variables.
    for copy in (model.teacher_backbone, model.ema_backbone):
        assert copy is not backbone
        assert not copy.trainable
        assert _weights_equal(copy.get_weights(), backbone.get_weights())
    assert set(map(id, model.trainable_variables)) == set(
        map(id, backbone.trainable_variables)
    )

    online = DSDImageGenerator(backbone, teacher="online", ema_decay=None)
    assert online.teacher_backbone is None and online.ema_backbone is None
    assert online.inference_backbone is backbone
    # The naive mode reads no target latent, so it needs no teacher.
    naive = DSDImageGenerator(backbone, objective="naive")
    assert naive.teacher_backbone is None


def test_config_round_trip():
    model = _model(
        objective="decoupled",
        teacher="online",
        label_dropout=0.1,
        time_distribution="uniform",
        t_min=0.1,
    )
    config = model.get_config()
    restored = DSDImageGenerator.from_config(config)
    assert restored.get_config() == config
    assert restored.backbone.get_config() == model.backbone.get_config()


def test_mixed_precision_copies_keep_the_policy():
    backbone = test_utils.tiny_backbone(dtype="mixed_bfloat16")
    model = DSDImageGenerator(backbone)
    for copy in (model.teacher_backbone, model.ema_backbone):
        assert copy.transformer_blocks[0].compute_dtype == "bfloat16"


# === Training ===


# The default pair runs on every backend in the fast tier; the other five
# (about 3 s each eagerly on JAX) on PyTorch, and everywhere in the full
# tier.
@pytest.mark.parametrize(
    "objective, teacher",
    [
        pytest.param(
            objective,
            teacher,
            marks=()
            if (objective, teacher) == ("dsd", "ema")
            else pytest.mark.large(except_backend="torch"),
        )
        for objective in ("naive", "decoupled", "dsd")
        for teacher in ("ema", "online")
    ],
)
def test_two_step_fit(objective, teacher):
    model = _compile_fast(_model(objective=objective, teacher=teacher))
    images, labels = _data(2 * BATCH_SIZE)
    callback = RecordWeights()
    before = model.backbone.get_weights()
    history = _fit(model, images, labels, callbacks=[callback])
    _assert_finite_logs(history)
    # The default warm-up starts from a learning rate of 0: the first
    # update leaves the weights, the second moves them.
    assert _weights_equal(callback.weights[0], before)
    assert not _weights_equal(callback.weights[1], before)


def test_fit_with_dict_input():
    model = _compile_fast(
        _model(
            label_dropout=0.5,
            time_distribution="uniform",
            diffusion_loss_weight=2.0,
        )
    )
    images, labels = _data(4)
    callback = RecordWeights()
    history = _fit(
        model, {"images": images, "labels": labels}, callbacks=[callback]
    )
    assert len(callback.weights) == 2
    # Two steps: the logs are means over the epoch, still loss = sum.
    _assert_finite_logs(history, diffusion_loss_weight=2.0)


def test_fit_with_tf_data():
    import tensorflow as tf

    images, labels = _data(4)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.batch(BATCH_SIZE)
    model = _compile_fast(_model())
    callback = RecordWeights()
    history = model.fit(dataset, epochs=1, verbose=0, callbacks=[callback])
    _assert_finite_logs(history)
    assert len(callback.weights) == 2


@pytest.mark.large
def test_fit_on_an_image_folder(tmp_path):
    # `ImageFolder`'s uint8 batches and int labels, through the compiled
    # defaults (most of a minute to compile on a 2-core CPU).
    from keras_dsd.datasets import ImageFolder

    folder = ImageFolder(test_utils.image_folder_tree(tmp_path / "tree"))
    backbone = DSDBackbone.from_preset(
        "dsd_tiny", image_size=32, num_classes=folder.num_classes
    )
    model = DSDImageGenerator(backbone=backbone, seed=0)
    model.compile()
    history = model.fit(
        folder.as_dataset(32, 4),
        steps_per_epoch=2,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
    logs = {key: values[-1] for key, values in history.history.items()}
    assert all(np.isfinite(logs[key]) for key in LOG_KEYS), logs
    # dsd_tiny: 8 latent channels, LayerNorm per token: rank at most 7.
    assert 1.0 <= logs["latent_effective_rank"] <= 7.0 + 1e-3, logs


def test_default_optimizer_trains_as_keras_adamw_does():
    # `keras_dsd.optimizers.AdamW` (the default) against Keras' own AdamW,
    # an independent implementation of the same update: same losses and
    # weights after three steps, to float32 round-off. (Epsilon 1e-3: with
    # Keras' 1e-7, Adam turns the gradient of an attention key bias, zero
    # in exact arithmetic and so pure round-off noise, into steps of about
    # the learning rate, and any round-off difference between the two
    # implementations changes that noise.)
    x, y = _data()
    runs = []
    for cls in (AdamW, keras.optimizers.AdamW):
        optimizer = cls(
            learning_rate=1e-2, weight_decay=0.0, clipnorm=1.0, epsilon=1e-3
        )
        model = _compile_fast(_model(), optimizer=optimizer)
        losses = [
            float(model.train_on_batch(x, y, return_dict=True)["loss"])
            for _ in range(3)
        ]
        weights = [
            test_utils.to_numpy(v) for v in model.backbone.trainable_variables
        ]
        runs.append((losses, weights))
    (losses, weights), (keras_losses, keras_weights) = runs
    assert abs(keras_losses[2] - keras_losses[0]) > 1e-3  # it trained
    np.testing.assert_allclose(losses, keras_losses, rtol=1e-5)
    for ours, theirs in zip(weights, keras_weights):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_compile_defaults(trained):
    model = trained.model
    assert isinstance(model.optimizer, AdamW)
    assert model.optimizer.clipnorm == 1.0
    assert float(model.optimizer.weight_decay) == 0.0
    # Linear warm-up over 100 updates to 2e-3 * 128 / width, by hand.
    updates = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    peak = 2e-3 * 128 / model.backbone.hidden_dim
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
        peak * updates / 100,
        rtol=1e-5,
    )
    assert model.jit_compile == (BACKEND != "torch")
    _assert_finite_logs(trained.history)
    # One step, traced (JAX, TensorFlow) or run (PyTorch) once: TensorFlow
    # traces twice if the optimizer's variables are created in the step.
    assert trained.traces == 1


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow only")
def test_fit_under_tensorflow_xla(trained):
    assert trained.model.jit_compile is True
    assert trained.model.optimizer.iterations.numpy() == 1
    _assert_finite_logs(trained.history)


def test_ema_after_one_compiled_step(trained):
    # Step k = 0: decay min(m, 1 / 10) = 0.1 for both the teacher (m = 0.5)
    # and the sampling EMA (m = 0.9).
    model = trained.model
    expected = _numpy_ema(trained.initial, [model.backbone.get_weights()], 0.5)
    _assert_weights_close(model.teacher_backbone.get_weights(), expected)
    _assert_weights_close(model.ema_backbone.get_weights(), expected)


def test_ema_after_three_steps():
    # teacher_decay=0.15 binds from step 1 on (0.1, 0.15, 0.15) while
    # ema_decay=0.9 stays in the warm-up (0.1, 2/11, 3/12).
    backbone = _random_backbone()
    initial = backbone.get_weights()
    model = _model(backbone, teacher_decay=0.15, ema_decay=0.9)
    _compile_fast(
        model,
        optimizer=keras.optimizers.AdamW(learning_rate=1e-2, weight_decay=0),
    )
    images, labels = _data(6)
    callback = RecordWeights()
    _fit(model, images, labels, callbacks=[callback])
    assert len(callback.weights) == 3
    trained_weights = callback.weights
    assert not _weights_equal(trained_weights[0], initial)
    assert not _weights_equal(trained_weights[2], trained_weights[1])
    teacher = _numpy_ema(initial, trained_weights, 0.15)
    ema = _numpy_ema(initial, trained_weights, 0.9)
    _assert_weights_close(model.teacher_backbone.get_weights(), teacher)
    _assert_weights_close(model.ema_backbone.get_weights(), ema)
    # The two decays give different results, so each was applied.
    assert max(np.abs(t - e).max() for t, e in zip(teacher, ema)) > 1e-3


def test_ema_without_warmup():
    backbone = _random_backbone()
    initial = backbone.get_weights()
    model = _model(backbone, teacher_decay=0.5, ema_decay=0.8, ema_warmup=False)
    _compile_fast(
        model,
        optimizer=keras.optimizers.AdamW(learning_rate=1e-2, weight_decay=0),
    )
    images, labels = _data(4)
    callback = RecordWeights()
    _fit(model, images, labels, callbacks=[callback])
    for network, decay in (
        (model.teacher_backbone, 0.5),
        (model.ema_backbone, 0.8),
    ):
        expected = [w.astype("float64") for w in initial]
        for weights in callback.weights:
            expected = [
                decay * s + (1 - decay) * w for s, w in zip(expected, weights)
            ]
        _assert_weights_close(network.get_weights(), expected)


def test_ema_with_gradient_accumulation():
    backbone = _random_backbone()
    initial = backbone.get_weights()
    model = _model(backbone, teacher_decay=0.15, ema_decay=0.9)
    _compile_fast(
        model,
        optimizer=keras.optimizers.AdamW(
            learning_rate=1e-2, weight_decay=0, gradient_accumulation_steps=2
        ),
    )
    images, labels = _data(8)
    callback = RecordWeights()
    _fit(model, images, labels, callbacks=[callback])
    weights = callback.weights
    assert len(weights) == 4
    # The network only moves on the update steps (batches 2 and 4) ...
    assert _weights_equal(weights[0], initial)
    assert not _weights_equal(weights[1], weights[0])
    assert _weights_equal(weights[2], weights[1])
    assert not _weights_equal(weights[3], weights[2])
    # ... and the EMAs are updated exactly twice, with k = 0 and k = 1.
    updates = [weights[1], weights[3]]
    _assert_weights_close(
        model.teacher_backbone.get_weights(),
        _numpy_ema(initial, updates, 0.15),
    )
    _assert_weights_close(
        model.ema_backbone.get_weights(), _numpy_ema(initial, updates, 0.9)
    )


def test_online_teacher_trains_without_copies():
    model = _compile_fast(_model(teacher="online", ema_decay=None))
    images, labels = _data()
    history = _fit(model, images, labels)
    _assert_finite_logs(history)
    assert model.teacher_backbone is None and model.ema_backbone is None


# === Generation ===
# Every generate call below uses 2 labels and 2 steps where it can, so that
# the compiled sampling programs are shared between tests.
LABELS = [0, 2]


def test_generate_shape_dtype_and_determinism(trained):
    model = trained.model
    images = model.generate(LABELS, num_steps=2, seed=7)
    assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8
    again = model.generate(LABELS, num_steps=2, seed=7)
    np.testing.assert_array_equal(images, again)
    other = model.generate(LABELS, num_steps=2, seed=8)
    assert not np.array_equal(images, other)
    # The default seed draws fresh noise.
    assert not np.array_equal(
        model.generate(LABELS, num_steps=2),
        model.generate(LABELS, num_steps=2),
    )


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_generate_matches_an_independent_sampling_loop(trained, sampler):
    # The documented recipe, written out in numpy around the sampling-EMA
    # network's `denoise` and `decode` calls (no library sampler or
    # velocity function): numpy noise from the seed, the uniform grid
    # 0, 1/2, 1, the clean-latent velocity (z_hat - z) / (1 - t), Euler or
    # Heun with a final Euler step, then decode and map to uint8.
    model = trained.model
    labels = np.array(LABELS, "int32")
    images, latents = model.generate(
        labels, num_steps=2, sampler=sampler, seed=3, return_latents=True
    )
    assert latents.shape == (2, 4, 4) and latents.dtype == np.float32
    network = model.ema_backbone
    z = np.random.default_rng(3).standard_normal((2, 4, 4))

    def velocity(z, t):
        prediction = test_utils.to_numpy(
            network.denoise(
                z.astype("float32"), np.full((2,), t, "float32"), labels
            )
        )
        return (prediction - z) / max(1.0 - t, 1e-4)

    if sampler == "heun":
        v0 = velocity(z, 0.0)
        v1 = velocity(z + 0.5 * v0, 0.5)
        z = z + 0.5 * 0.5 * (v0 + v1)
    else:
        z = z + 0.5 * velocity(z, 0.0)
    expected = z + 0.5 * velocity(z, 0.5)
    decoded = test_utils.to_numpy(network.decode(expected.astype("float32")))
    np.testing.assert_allclose(latents, expected, atol=1e-4)
    expected_images = np.round((np.clip(decoded, -1, 1) + 1) * 127.5)
    # Allow one grey level for rounding at a .5 boundary.
    assert np.abs(images.astype(int) - expected_images).max() <= 1
    assert len(np.unique(images)) > 10  # not a constant image


def test_generate_samplers_and_guidance(trained):
    model = trained.model
    kwargs = {"num_steps": 2, "seed": 0, "return_latents": True}
    _, euler = model.generate(LABELS, sampler="euler", **kwargs)
    _, heun = model.generate(LABELS, sampler="heun", **kwargs)
    assert not np.allclose(euler, heun)
    guided_images, guided = model.generate(
        LABELS, sampler="euler", guidance_scale=2.0, **kwargs
    )
    assert guided_images.shape == (2, 8, 8, 3)
    assert guided_images.dtype == np.uint8
    assert np.all(np.isfinite(guided))
    assert not np.allclose(guided, euler)
    # Scale 1: v_u + 1 * (v_c - v_u) = v_c, i.e. no guidance.
    _, unit = model.generate(
        LABELS, sampler="euler", guidance_scale=1.0, **kwargs
    )
    np.testing.assert_allclose(unit, euler, atol=1e-4)


def _euler_latents(model, **kwargs):
    _, latents = model.generate(
        LABELS,
        num_steps=2,
        sampler="euler",
        seed=0,
        return_latents=True,
        **kwargs,
    )
    return latents


def test_guidance_interval_over_all_times_equals_plain_guidance(trained):
    model = trained.model
    guided = _euler_latents(model, guidance_scale=2.0)
    whole = _euler_latents(
        model, guidance_scale=2.0, guidance_interval=(0.0, 1.0)
    )
    np.testing.assert_allclose(whole, guided, atol=1e-5)


@pytest.mark.parametrize(
    "interval",
    [
        (0.6, 1.0),  # between the last evaluated time 0.5 and t = 1
        (0.1, 0.5),  # half-open: 0.5 itself is outside
    ],
)
def test_guidance_interval_without_grid_times_is_unguided(trained, interval):
    # Euler with 2 steps evaluates the network at t = 0 and t = 0.5 only.
    model = trained.model
    unguided = _euler_latents(model)
    latents = _euler_latents(
        model, guidance_scale=2.0, guidance_interval=interval
    )
    np.testing.assert_allclose(latents, unguided, atol=1e-5)


def test_guidance_interval_guides_only_the_steps_inside(trained):
    # Euler, grid 0, 1/2, 1, interval [0, 0.5): the first step uses the
    # guided velocity v_u + s * (v_c - v_u), the second the conditional
    # velocity v_c, with v = (z_hat - z) / (1 - t) from the sampling-EMA
    # network's `denoise` (written out in numpy, as in the test above).
    model = trained.model
    scale = 3.0
    latents = _euler_latents(
        model, guidance_scale=scale, guidance_interval=(0.0, 0.5)
    )
    network = model.ema_backbone
    labels = np.array(LABELS, "int32")
    null = np.full((2,), network.null_class, "int32")

    def velocity(z, t, labels):
        prediction = test_utils.to_numpy(
            network.denoise(
                z.astype("float32"), np.full((2,), t, "float32"), labels
            )
        )
        return (prediction - z) / (1.0 - t)

    z = np.random.default_rng(0).standard_normal((2, 4, 4))
    v_c, v_u = velocity(z, 0.0, labels), velocity(z, 0.0, null)
    z = z + 0.5 * (v_u + scale * (v_c - v_u))
    expected = z + 0.5 * velocity(z, 0.5, labels)
    np.testing.assert_allclose(latents, expected, atol=1e-4)
    # Both halves matter: the result is neither unguided nor fully guided.
    assert not np.allclose(latents, _euler_latents(model), atol=1e-3)
    assert not np.allclose(
        latents, _euler_latents(model, guidance_scale=scale), atol=1e-3
    )


# 12 s on JAX (a sampler compiled for each batch size); fast on TF and PyTorch.
@pytest.mark.large(only_backend="jax")
def test_guidance_interval_runs_the_doubled_batch_only_inside(
    trained, monkeypatch
):
    # Heun, 2 steps: evaluations at t = 0, 0.5 (the corrector) and 0.5
    # (the final Euler step); only t = 0 is in [0, 0.25).
    model = trained.model
    network = model.inference_backbone
    batch_sizes = []
    denoise = network.denoise

    def recording_denoise(z, t, labels):
        batch_sizes.append(int(z.shape[0]))
        return denoise(z, t, labels)

    monkeypatch.setattr(network, "denoise", recording_denoise)
    noise = np.random.default_rng(0).standard_normal((2, 4, 4))
    with test_utils.eager_loops():
        model.generate_step(
            keras.ops.convert_to_tensor(noise, "float32"),
            keras.ops.convert_to_tensor(LABELS, "int32"),
            num_steps=2,
            sampler="heun",
            guidance_scale=2.0,
            guidance_interval=(0.0, 0.25),
        )
    assert batch_sizes == [4, 2, 2]


@pytest.mark.parametrize(
    "interval,match",
    [
        ((0.5, 0.5), r"0 <= t_low < t_high <= 1, got guidance_interval="),
        ((0.7, 0.3), r"guidance_interval=\(0.7, 0.3\)"),
        ((-0.1, 0.5), r"guidance_interval=\(-0.1, 0.5\)"),
        ((0.2, 1.5), r"guidance_interval=\(0.2, 1.5\)"),
        ((float("nan"), 1.0), r"guidance_interval=\(nan, 1.0\)"),
        ((0.1,), r"must be a pair"),
        ((0.1, 0.2, 0.3), r"must be a pair"),
        (0.5, r"must be a pair"),
        (("a", "b"), r"must be a pair"),
    ],
)
def test_bad_guidance_interval(fresh, interval, match):
    with pytest.raises(ValueError, match=match):
        fresh.generate(
            [0, 1],
            num_steps=1,
            guidance_scale=2.0,
            guidance_interval=interval,
        )


def test_guidance_interval_needs_a_guidance_scale(fresh):
    with pytest.raises(
        ValueError, match=r"`guidance_interval` needs a `guidance_scale`"
    ):
        fresh.generate([0, 1], num_steps=1, guidance_interval=(0.0, 0.5))


def test_generate_in_batches(trained):
    # numpy fills the noise in order, so the first two images of a seed's
    # three are the two images of the same seed: batching (with a padded
    # last batch) must not change them.
    model = trained.model
    kwargs = {"num_steps": 2, "seed": 5, "return_latents": True}
    _, two = model.generate(LABELS, **kwargs)
    _, three = model.generate([*LABELS, 1], batch_size=2, **kwargs)
    assert three.shape == (3, 4, 4)
    np.testing.assert_allclose(three[:2], two, atol=1e-6)
    assert np.all(np.isfinite(three[2]))
    assert not np.allclose(three[2], three[0])


def test_generate_without_ema_uses_trained_weights():
    backbone = _random_backbone()
    model = _model(backbone, ema_decay=None)
    assert model.inference_backbone is backbone
    _, latents = model.generate(
        LABELS, num_steps=1, sampler="euler", seed=0, return_latents=True
    )
    # One Euler step from t = 0 lands on the network's clean-latent
    # prediction for the noise.
    noise = np.random.default_rng(0).standard_normal((2, 4, 4))
    expected = backbone.denoise(
        noise.astype("float32"), np.zeros((2,)), np.array(LABELS)
    )
    np.testing.assert_allclose(
        latents, test_utils.to_numpy(expected), atol=1e-4
    )


# === Encode / decode ===


def test_encode_decode(trained):
    model = trained.model
    images = _data(3)[0]
    latents = model.encode(images, batch_size=2)
    assert latents.shape == (3, 4, 4) and latents.dtype == np.float32
    expected = model.ema_backbone.encode(images.astype("float32") / 127.5 - 1)
    np.testing.assert_allclose(
        latents, test_utils.to_numpy(expected), atol=1e-5
    )
    decoded = model.decode(latents, batch_size=2)
    assert decoded.shape == (3, 8, 8, 3) and decoded.dtype == np.uint8
    # `call` is the training-time autoencoder pass with the trained network.
    outputs = model(images)
    assert tuple(outputs["latents"].shape) == (3, 4, 4)
    assert tuple(outputs["reconstructions"].shape) == (3, 8, 8, 3)


def test_decode_checks_latents(trained):
    with pytest.raises(ValueError, match="`latents`"):
        trained.model.decode(np.zeros((2, 5, 4), "float32"))
    with pytest.raises(ValueError, match="`latents`"):
        trained.model.decode(np.zeros((2, 4, 4), "int32"))


# === Saving ===


def _assert_same_model(restored, model):
    assert type(restored) is DSDImageGenerator
    assert restored.get_config() == model.get_config()
    for name in ("backbone", "teacher_backbone", "ema_backbone"):
        assert _weights_equal(
            getattr(restored, name).get_weights(),
            getattr(model, name).get_weights(),
        ), name
    kwargs = {"num_steps": 2, "seed": 11, "return_latents": True}
    expected_images, expected_latents = model.generate(LABELS, **kwargs)
    images, latents = restored.generate(LABELS, **kwargs)
    if BACKEND == "tensorflow":
        # Two separately XLA-compiled programs may differ in the last bit.
        np.testing.assert_allclose(latents, expected_latents, atol=1e-5)
        assert np.abs(images.astype(int) - expected_images).max() <= 1
    else:
        np.testing.assert_array_equal(latents, expected_latents)
        np.testing.assert_array_equal(images, expected_images)


def test_keras_save_and_load(trained_distinct, tmp_path):
    model = trained_distinct
    backbone = model.backbone.get_weights()
    assert not _weights_equal(model.teacher_backbone.get_weights(), backbone)
    assert not _weights_equal(model.ema_backbone.get_weights(), backbone)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    _assert_same_model(restored, model)
    # Compiled again, with the optimizer's state: training can go on.
    assert restored.compiled
    assert type(restored.optimizer) is type(model.optimizer)
    for a, b in zip(restored.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(
            test_utils.to_numpy(a), test_utils.to_numpy(b)
        )
    assert int(test_utils.to_numpy(restored.optimizer.iterations)) >= 1


def test_save_to_preset_and_from_preset(trained_distinct, tmp_path):
    model = trained_distinct
    preset_dir = str(tmp_path / "preset")
    model.save_to_preset(preset_dir)
    files = set(os.listdir(preset_dir))
    assert {
        "config.json",
        "model.weights.h5",
        "metadata.json",
        "task.json",
        "task.weights.h5",
    } <= files
    restored = DSDImageGenerator.from_preset(preset_dir)
    _assert_same_model(restored, model)
    # The backbone files alone hold the weights to generate with: the
    # sampling EMA, not the trained network.
    backbone = DSDBackbone.from_preset(preset_dir)
    assert _weights_equal(
        backbone.get_weights(), model.ema_backbone.get_weights()
    )
    assert not _weights_equal(
        backbone.get_weights(), model.backbone.get_weights()
    )
    # Task arguments can be overridden.
    naive = DSDImageGenerator.from_preset(preset_dir, objective="naive")
    assert naive.objective == "naive"


def test_from_builtin_preset():
    model = DSDImageGenerator.from_preset("dsd_tiny", objective="decoupled")
    assert model.objective == "decoupled"
    config = model.backbone.get_config()
    for key, value in presets["dsd_tiny"]["config"].items():
        assert config[key] == value


# === Bad input ===


@pytest.fixture(scope="module")
def fresh():
    keras.utils.set_random_seed(0)
    return _compile_fast(_model())


@pytest.mark.parametrize(
    "images,match",
    [
        (np.zeros((8, 8, 3), "uint8"), r"`images` must have rank 4"),
        (np.zeros((8, 8, 8, 1), "uint8"), r"`images` must have 3 channels"),
        (
            np.zeros((8, 12, 12, 3), "uint8"),
            r"`images` has size 12x12; this model takes 8x8",
        ),
        (
            np.zeros((8, 10, 10, 3), "uint8"),
            r"`images` has size 10x10, which patch_size=4 does not divide",
        ),
        (
            np.full((8, 8, 8, 3), -0.5, "float32"),
            r"`images` must hold values in \[0, 255\]",
        ),
        (
            np.full((8, 8, 8, 3), 300.0, "float32"),
            r"`images` must hold values in \[0, 255\]",
        ),
        (np.full((8, 8, 8, 3), np.nan, "float32"), r"`images` contains NaN"),
        (np.full((8, 8, 8, 3), "a"), r"`images`"),
    ],
    ids=[
        "rank3",
        "gray",
        "12x12",
        "10x10",
        "negative",
        "over255",
        "nan",
        "string",
    ],
)
def test_bad_images(fresh, images, match):
    labels = np.zeros((len(images),), "int32")
    with pytest.raises(ValueError, match=match):
        _fit(fresh, images, labels)
    with pytest.raises(ValueError, match=match):
        fresh.encode(images)


def test_float_images_in_range_are_accepted(fresh):
    images = _data()[0].astype("float32")
    latents = fresh.encode(images)
    np.testing.assert_allclose(
        latents, fresh.encode(images.astype("uint8")), atol=1e-6
    )


@pytest.mark.parametrize("label", [3, -1])
def test_labels_out_of_range(fresh, label):
    images, labels = _data(8)
    labels[2] = label
    with pytest.raises(ValueError, match=rf"`labels` has class id {label}"):
        _fit(fresh, images, labels)
    with pytest.raises(ValueError, match=rf"`labels` has class id {label}"):
        _fit(fresh, {"images": images, "labels": labels}, None)
    with pytest.raises(
        ValueError, match=rf"`class_labels` has class id {label}"
    ):
        fresh.generate([0, label], num_steps=1)


def test_bad_labels(fresh):
    images, labels = _data(8)
    with pytest.raises(ValueError, match="`labels` has 7 entries"):
        _fit(fresh, images, labels[:7])
    with pytest.raises(ValueError, match="labels"):
        _fit(fresh, images, None)
    with pytest.raises(ValueError, match="`labels` must hold integer"):
        _fit(fresh, images, labels + 0.5)
    with pytest.raises(ValueError, match="`class_labels` must be a 1-D"):
        fresh.generate(np.zeros((2, 2), "int32"), num_steps=1)


def test_bad_labels_in_tf_data(fresh):
    import tensorflow as tf

    images, labels = _data()
    labels[0] = 3
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    with pytest.raises(ValueError, match="`labels` has class id 3"):
        fresh.fit(dataset, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"objective": "velocity"}, "objective='velocity'"),
        ({"teacher": "momentum"}, "teacher='momentum'"),
        ({"time_distribution": "beta"}, "time_distribution='beta'"),
        ({"teacher_decay": 1.0}, "teacher_decay"),
        ({"ema_decay": -0.1}, "ema_decay"),
        ({"t_min": 0.0}, "t_min"),
        ({"label_dropout": 1.0}, "label_dropout"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSDImageGenerator(test_utils.tiny_backbone(), **kwargs)


def test_backbone_must_be_a_dsd_backbone():
    with pytest.raises(ValueError, match="`backbone`"):
        DSDImageGenerator(keras.Sequential([keras.layers.Dense(2)]))


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset='nope'"):
        DSDImageGenerator.from_preset("nope")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sampler": "rk4"}, "sampler='rk4'"),
        ({"num_steps": 0}, "num_steps=0"),
        ({"num_steps": 2.5}, "num_steps"),
        ({"time_shift": 0.0}, "shift"),
        ({"batch_size": 0}, "batch_size"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
    ],
)
def test_bad_generate_arguments(fresh, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fresh.generate([0, 1], **{"num_steps": 1, **kwargs})


# 15-19 s on JAX (eager); fast on TF and PyTorch.
@pytest.mark.large(only_backend="jax")
def test_gradient_accumulation_equals_a_larger_batch():
    # k = 2 accumulated batches of 2 must give the update of one batch of 4:
    # the loss is a batch mean and Keras averages the accumulated gradients.
    # Plain SGD, since Adam's first step (about lr * sign(g)) would hide a
    # wrong gradient scale; times and noise are fixed functions of each
    # example, since the random draws of one batch of 4 and of two batches
    # of 2 differ.
    images, labels = _data(4)
    initial = _random_backbone().get_weights()
    models = []
    for batch_size, accumulation in ((4, None), (2, 2)):
        backbone = _random_backbone()
        model = test_utils.deterministic_generator(
            backbone, teacher_decay=0.5, ema_decay=0.9, seed=0
        )
        _compile_fast(
            model,
            optimizer=keras.optimizers.SGD(
                learning_rate=0.5, gradient_accumulation_steps=accumulation
            ),
        )
        _fit(model, images, labels, batch_size=batch_size)
        models.append(model)
    large, accumulated = models
    assert not _weights_equal(large.backbone.get_weights(), initial)
    # Compared relative to each weight's update (up to 4.5 here): float32
    # reductions split over 2 batches differ from one batch of 4 by up to
    # 4e-5 of the update (8e-5 absolute, on a Zen 2 CPU with TensorFlow),
    # while a wrong gradient scale or a lost batch is off by 0.5-1 of it.
    for network in ("backbone", "teacher_backbone", "ema_backbone"):
        for a, e, w in zip(
            getattr(accumulated, network).get_weights(),
            getattr(large, network).get_weights(),
            initial,
        ):
            update = np.abs(e - w).max()
            np.testing.assert_allclose(a, e, atol=1e-6 + 1e-3 * update, rtol=0)


# 16 s on JAX (eager checks of a mixed-precision model); fast on TF and PyTorch.
@pytest.mark.large(only_backend="jax")
def test_mixed_bfloat16_training():
    backbone = test_utils.randomize_weights(
        test_utils.tiny_backbone(dtype="mixed_bfloat16"), seed=1, stddev=0.2
    )
    initial = backbone.get_weights()
    model = _model(backbone)
    _compile_fast(
        model,
        optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0),
    )
    history = _fit(model, *_data(6))
    assert set(history.history) >= LOG_KEYS
    for key, values in history.history.items():
        assert np.all(np.isfinite(values)), key
    assert not _weights_equal(model.backbone.get_weights(), initial)
    # float32 master weights, teacher and sampling EMA ...
    for network in (model.backbone, model.teacher_backbone, model.ema_backbone):
        assert {str(w.dtype) for w in network.weights} == {"float32"}
    assert {str(v.dtype) for v in model.optimizer.variables} <= {
        "float32",
        "int64",
        "int32",
    }
    # ... bfloat16 matmuls in the trunk, float32 in the sensitive layers.
    block = model.backbone.transformer_blocks[0]
    assert block.compute_dtype == "bfloat16"
    assert model.backbone.latent_norm.compute_dtype == "float32"
    assert block.attention_norm.norm.compute_dtype == "float32"
    outputs = model(_data(2)[0])
    assert test_utils.to_numpy(outputs["latents"]).dtype == np.float32


def test_compile_config_from_another_backend_is_not_replayed(trained):
    config = trained.model.get_compile_config()
    assert config["backend"] == BACKEND
    fresh = _model(compile=False)
    with pytest.warns(UserWarning, match="loaded without an optimizer"):
        fresh.compile_from_config({**config, "backend": "other"})
    assert getattr(fresh, "optimizer", None) is None
    with pytest.raises(ValueError, match="needs an optimizer: call compile"):
        _fit(fresh, *_data())
    fresh.compile_from_config(config)
    assert type(fresh.optimizer) is type(trained.model.optimizer)


# === The training step, pinned by numbers ===
# Three examples with fixed, different times (0.97 is clamped by t_min:
# w = 1 / 0.05^2 = 400), fixed noise and a fixed label-dropout mask. The
# teacher holds weights of its own, so swapping the online and the target
# latent changes the loss.
PIN_TIMES = np.array([0.2, 0.6, 0.97], "float32")
PIN_NOISE = (
    np.random.default_rng(9).standard_normal((3, 4, 4)).astype("float32")
)
PIN_LABELS = np.array([0, 1, 2], "int32")
PIN_DROP = np.array([False, True, False])
PIN_WEIGHT = 0.7  # diffusion_loss_weight
PIN_VARIABLES = (
    "patch_embedding/projection/kernel",
    "encoder_head/projection/kernel",
    "denoiser_head/projection/kernel",
    "class_embedding/embeddings",
)


class PinnedGenerator(DSDImageGenerator):
    def _sample_time(self, latents):
        return keras.ops.convert_to_tensor(PIN_TIMES)

    def _sample_noise(self, latents):
        return keras.ops.convert_to_tensor(PIN_NOISE)

    def _sample_label_dropout(self, batch_size):
        return keras.ops.convert_to_tensor(PIN_DROP)


def _pinned_model(objective, label_dropout=0.5):
    model = PinnedGenerator(
        _random_backbone(),
        objective=objective,
        seed=0,
        diffusion_loss_weight=PIN_WEIGHT,
        label_dropout=label_dropout,
    )
    if model.teacher_backbone is not None:
        test_utils.randomize_weights(model.teacher_backbone, seed=5, stddev=0.2)
    return model


def _pinned_variables(model):
    by_path = {v.path: v for v in model.backbone.trainable_variables}
    return [by_path[path] for path in PIN_VARIABLES]


def _independent_loss(model, images, objective, labels):
    """The loss written out from the backbone's encode / decode / denoise
    calls and `keras.ops`, as docs/method.md states it."""
    ops = keras.ops
    x = ops.convert_to_tensor(images.astype("float32") / 127.5 - 1.0)
    t = ops.convert_to_tensor(PIN_TIMES)[:, None, None]
    eps = ops.convert_to_tensor(PIN_NOISE)
    z1 = model.backbone.encode(x)
    z_t = t * z1 + (1.0 - t) * eps
    prediction = model.backbone.denoise(z_t, PIN_TIMES, labels)
    reconstruction = ops.mean(ops.square(model.backbone.decode(z1) - x))
    if objective == "naive":
        diffusion = ops.mean(ops.square(prediction - (z1 - eps)))
    else:
        z2 = ops.stop_gradient(model.teacher_backbone.encode(x))
        if objective == "decoupled":
            diffusion = ops.mean(ops.square(prediction - (z2 - eps)))
        else:
            weight = ops.convert_to_tensor(
                1.0 / np.maximum(1.0 - PIN_TIMES, 0.05) ** 2
            )
            per_example = ops.mean(ops.square(prediction - z2), axis=(1, 2))
            diffusion = ops.mean(weight * per_example)
    return reconstruction + PIN_WEIGHT * diffusion


def _numpy_loss(model, images, objective, labels):
    """The same loss from the networks' numpy outputs, in float64."""
    x = images.astype("float64") / 127.5 - 1.0
    x32 = x.astype("float32")
    z1 = test_utils.to_numpy(model.backbone.encode(x32)).astype("float64")
    t = PIN_TIMES.astype("float64")[:, None, None]
    eps = PIN_NOISE.astype("float64")
    z_t = (t * z1 + (1 - t) * eps).astype("float32")
    prediction = test_utils.to_numpy(
        model.backbone.denoise(z_t, PIN_TIMES, labels)
    ).astype("float64")
    decoded = test_utils.to_numpy(model.backbone.decode(z1.astype("float32")))
    reconstruction = np.mean((decoded - x) ** 2)
    if objective == "naive":
        diffusion = np.mean((prediction - (z1 - eps)) ** 2)
    else:
        z2 = test_utils.to_numpy(model.teacher_backbone.encode(x32))
        if objective == "decoupled":
            diffusion = np.mean((prediction - (z2 - eps)) ** 2)
        else:
            weight = 1.0 / np.maximum(1.0 - PIN_TIMES, 0.05) ** 2
            np.testing.assert_allclose(weight[2], 400.0, rtol=1e-4)
            diffusion = np.mean(
                weight * np.mean((prediction - z2) ** 2, axis=(1, 2))
            )
    return reconstruction + PIN_WEIGHT * diffusion


@pytest.mark.parametrize("objective", ["naive", "decoupled", "dsd"])
def test_compute_loss_value_and_gradients_are_pinned(objective):
    model = _pinned_model(objective)
    images = _data(3)[0]
    null = model.backbone.null_class
    dropped = np.where(PIN_DROP, null, PIN_LABELS).astype("int32")
    variables = _pinned_variables(model)

    def library():
        return model.compute_loss(x=images, y=PIN_LABELS)

    value, grads = test_utils.value_and_grad(library, variables)
    np.testing.assert_allclose(
        value, _numpy_loss(model, images, objective, dropped), rtol=2e-5
    )
    expected_value, expected = test_utils.value_and_grad(
        lambda: _independent_loss(model, images, objective, dropped),
        variables,
    )
    np.testing.assert_allclose(value, expected_value, rtol=2e-5)
    for path, actual, wanted in zip(PIN_VARIABLES, grads, expected):
        scale = np.abs(wanted).max()
        assert scale > 1e-6, path  # the weight matters
        # Each entry is a sum over the batch and tokens whose terms reach
        # the largest entry's size; XLA's CPU reductions split such sums
        # over threads in an order that varies run to run, so a small
        # entry beside large ones moves by float32 round-off of the large
        # ones (2.3e-6 seen for a 0.008 entry beside 9.3 on JAX): the
        # absolute tolerance follows the largest entry.
        np.testing.assert_allclose(
            actual,
            wanted,
            rtol=1e-4,
            atol=2e-6 * max(scale, 1.0),
            err_msg=path,
        )
    # Label dropout: the denoiser saw the null class for example 1 and its
    # own labels elsewhere, so class 1's embedding row gets no gradient
    # and the null row does.
    rows = grads[PIN_VARIABLES.index("class_embedding/embeddings")]
    assert np.all(rows[1] == 0.0)
    assert np.abs(rows[null]).max() > 1e-6
    assert np.abs(rows[0]).max() > 1e-6 and np.abs(rows[2]).max() > 1e-6


def test_label_dropout_off_sees_every_label():
    # Without label dropout (and outside training) the mask is never read.
    model = _pinned_model("dsd", label_dropout=0.0)
    images = _data(3)[0]
    value = float(
        test_utils.to_numpy(model.compute_loss(x=images, y=PIN_LABELS))
    )
    np.testing.assert_allclose(
        value, _numpy_loss(model, images, "dsd", PIN_LABELS), rtol=2e-5
    )
    dropout = _pinned_model("dsd")
    value = float(
        test_utils.to_numpy(
            dropout.compute_loss(x=images, y=PIN_LABELS, training=False)
        )
    )
    np.testing.assert_allclose(
        value, _numpy_loss(dropout, images, "dsd", PIN_LABELS), rtol=2e-5
    )


def test_deterministic_helper_gives_distinct_times():
    model = test_utils.deterministic_generator(_random_backbone())
    latents = model.backbone.encode(_data(4)[0].astype("float32") / 127.5 - 1.0)
    times = test_utils.to_numpy(model._sample_time(latents))
    assert np.all((times > 0) & (times < 1))
    assert np.min(np.abs(times[:, None] - times[None]) + np.eye(4)) > 1e-3, (
        times
    )


# === EMA step counter, mixed float16 ===


def _ema_step(model):
    return int(test_utils.to_numpy(model.ema_step))


def test_warmup_continues_after_a_weights_round_trip(tmp_path):
    # Two steps, save, load into a new model compiled with a fresh
    # optimizer (as after `from_preset`), one more step: that update is
    # k = 2, decay min(m, 3 / 12) = 0.25 for the EMA (m = 0.9) and 0.2 for
    # the teacher (m = 0.2), not the k = 0 decay 0.1 of a fresh optimizer.
    def make():
        return _compile_fast(
            _model(_random_backbone(), teacher_decay=0.2, ema_decay=0.9),
            optimizer=keras.optimizers.AdamW(learning_rate=1e-2),
        )

    first = make()
    _fit(first, *_data(4))
    assert _ema_step(first) == 2
    path = str(tmp_path / "model.weights.h5")
    first.save_weights(path)

    second = make()
    second.load_weights(path)
    assert _ema_step(second) == 2
    second.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-2),
        jit_compile=False,
        run_eagerly=True,
    )
    teacher = second.teacher_backbone.get_weights()
    ema = second.ema_backbone.get_weights()
    callback = RecordWeights()
    _fit(second, *_data(2, seed=1), callbacks=[callback])
    assert _ema_step(second) == 3
    online = callback.weights[0]
    for network, before, decay in (
        (second.teacher_backbone, teacher, 0.2),
        (second.ema_backbone, ema, 0.25),
    ):
        expected = [decay * b + (1 - decay) * w for b, w in zip(before, online)]
        _assert_weights_close(network.get_weights(), expected)


def _float16_model():
    backbone = test_utils.randomize_weights(
        test_utils.tiny_backbone(dtype="mixed_float16"), seed=1, stddev=0.2
    )
    model = _model(backbone, teacher_decay=0.5, ema_decay=0.9)
    # Teacher and EMA apart from the network, so that overwriting them
    # with the trained weights shows.
    test_utils.randomize_weights(model.teacher_backbone, seed=2, stddev=0.2)
    test_utils.randomize_weights(model.ema_backbone, seed=3, stddev=0.2)
    return model


def test_float16_backbone_gets_loss_scaling():
    model = _compile_fast(_float16_model())
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


# 14 s on JAX; fast on TF and PyTorch.
@pytest.mark.large(only_backend="jax")
def test_float16_skipped_step_leaves_both_emas():
    # A loss scale of 2^100 overflows the float16 gradients: the
    # LossScaleOptimizer skips the step and halves its scale.
    model = _float16_model()
    _compile_fast(
        model,
        optimizer=keras.optimizers.LossScaleOptimizer(
            keras.optimizers.AdamW(learning_rate=1e-2), initial_scale=2.0**100
        ),
    )
    before = [
        network.get_weights()
        for network in (
            model.backbone,
            model.teacher_backbone,
            model.ema_backbone,
        )
    ]
    _fit(model, *_data())
    assert float(test_utils.to_numpy(model.optimizer.dynamic_scale)) == (
        2.0**99
    )
    after = [
        network.get_weights()
        for network in (
            model.backbone,
            model.teacher_backbone,
            model.ema_backbone,
        )
    ]
    for name, b, a in zip(("backbone", "teacher", "ema"), before, after):
        assert _weights_equal(a, b), name
    assert _ema_step(model) == 0


# 18 s on JAX; fast on TF and PyTorch.
@pytest.mark.large(only_backend="jax")
def test_float16_training_moves_the_emas_with_the_warmup():
    model = _float16_model()
    teacher = model.teacher_backbone.get_weights()
    ema = model.ema_backbone.get_weights()
    _compile_fast(
        model,
        optimizer=keras.optimizers.LossScaleOptimizer(
            keras.optimizers.AdamW(learning_rate=1e-2), initial_scale=1.0
        ),
    )
    callback = RecordWeights()
    _fit(model, *_data(4), callbacks=[callback])
    assert _ema_step(model) == 2
    assert int(test_utils.to_numpy(model.optimizer.iterations)) == 2
    # k = 0, 1: decays 0.1 and min(m, 2 / 11).
    for network, start, decay in (
        (model.teacher_backbone, teacher, 0.5),
        (model.ema_backbone, ema, 0.9),
    ):
        _assert_weights_close(
            network.get_weights(), _numpy_ema(start, callback.weights, decay)
        )


# === Empty data, and which weights each verb runs ===


def test_empty_data_is_refused_up_front(fresh):
    import tensorflow as tf

    images = np.zeros((0, 8, 8, 3), "uint8")
    labels = np.zeros((0,), "int32")

    class Empty(keras.utils.PyDataset):
        def __len__(self):
            return 0

        def __getitem__(self, index):
            raise IndexError(index)

    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    for data in ((images, labels), (dataset, None), (Empty(), None)):
        with pytest.raises(ValueError, match="empty training data"):
            fresh.fit(*data, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="`class_labels` is empty"):
        fresh.generate([], num_steps=1)
    with pytest.raises(ValueError, match="`images` is empty"):
        fresh.encode(images)
    with pytest.raises(ValueError, match="`latents` is empty"):
        fresh.decode(np.zeros((0, 4, 4), "float32"))


def test_predict_runs_the_trained_network_and_encode_the_ema():
    model = _model()
    test_utils.randomize_weights(model.ema_backbone, seed=4, stddev=0.2)
    images = _data(2)[0]
    x = images.astype("float32") / 127.5 - 1.0
    online = test_utils.to_numpy(model.backbone.encode(x))
    ema = test_utils.to_numpy(model.ema_backbone.encode(x))
    assert np.abs(online - ema).max() > 1e-2
    predicted = model.predict(images, batch_size=2, verbose=0)
    np.testing.assert_allclose(predicted["latents"], online, atol=1e-5)
    np.testing.assert_allclose(
        predicted["reconstructions"],
        test_utils.to_numpy(model.backbone.decode(online)),
        atol=1e-5,
    )
    np.testing.assert_allclose(model.encode(images), ema, atol=1e-5)
