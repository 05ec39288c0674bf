import keras
import numpy as np
import pytest

from keras_dsd.models.dsd import objectives
from keras_dsd.testing import test_utils

SHAPE = (4, 3, 2)  # (batch, tokens, channels)


def _batch(seed=0, t_low=0.1, t_high=0.9):
    """numpy `(online, target, noise, prediction, t)`."""
    rng = np.random.default_rng(seed)
    online = rng.normal(size=SHAPE).astype("float32")
    target = rng.normal(size=SHAPE).astype("float32")
    noise = rng.normal(size=SHAPE).astype("float32")
    prediction = rng.normal(size=SHAPE).astype("float32")
    t = rng.uniform(t_low, t_high, size=SHAPE[:1]).astype("float32")
    return online, target, noise, prediction, t


def _tensors(*arrays):
    return [
        None if a is None else keras.ops.convert_to_tensor(a) for a in arrays
    ]


def _loss(objective, prediction, online, target, noise, t, t_min=0.05):
    args = _tensors(prediction, online, target, noise, t)
    return float(
        test_utils.to_numpy(objectives.diffusion_loss(objective, *args, t_min))
    )


# === (a) The loss identity ===


def test_loss_identity_in_numpy():
    # ||v - (z - eps)||^2 == ||z_hat - z||^2 / (1 - t)^2
    # for v = (z_hat - z_t) / (1 - t) and z_t = t z + (1 - t) eps.
    rng = np.random.default_rng(0)
    z, eps, z_hat = rng.normal(size=(3, 16, 5, 7))
    t = rng.uniform(0.0, 0.99, size=(16, 1, 1))
    z_t = t * z + (1 - t) * eps
    v = (z_hat - z_t) / (1 - t)
    velocity_loss = np.sum((v - (z - eps)) ** 2, axis=(1, 2))
    clean_loss = np.sum((z_hat - z) ** 2, axis=(1, 2)) / (1 - t[:, 0, 0]) ** 2
    np.testing.assert_allclose(velocity_loss, clean_loss, rtol=1e-10)


def test_noisy_latents():
    online, _, noise, _, t = _batch()
    expected = t[:, None, None] * online + (1 - t[:, None, None]) * noise
    np.testing.assert_allclose(
        test_utils.to_numpy(objectives.noisy_latents(online, noise, t)),
        expected,
        atol=1e-6,
    )


def test_dsd_loss_equals_decoupled_velocity_loss():
    # With t <= 0.9 and t_min = 0.01 the clamp never binds, and the dsd
    # loss on z_hat is the velocity loss on v = (z_hat - z_t) / (1 - t)
    # when the target latent is the online latent.
    online, _, noise, z_hat, t = _batch()
    z_t = test_utils.to_numpy(objectives.noisy_latents(online, noise, t))
    v = (z_hat - z_t) / (1.0 - t[:, None, None])
    dsd = _loss("dsd", z_hat, online, online, noise, t, t_min=0.01)
    decoupled = _loss("decoupled", v, online, online, noise, t, t_min=0.01)
    np.testing.assert_allclose(dsd, decoupled, rtol=1e-5)
    # ... and both are the numpy velocity loss.
    expected = np.mean((v - (online - noise)) ** 2)
    np.testing.assert_allclose(dsd, expected, rtol=1e-5)


def test_dsd_weight_is_clamped_at_t_min():
    online, target, noise, z_hat, _ = _batch()
    t = np.array([0.0, 0.5, 0.97, 1.0], "float32")
    one_minus_t = np.maximum(1.0 - t, 0.05)
    per_example = np.mean((z_hat - target) ** 2, axis=(1, 2))
    expected = np.mean(per_example / one_minus_t**2)
    actual = _loss("dsd", z_hat, online, target, noise, t, t_min=0.05)
    np.testing.assert_allclose(actual, expected, rtol=1e-5)
    weights = test_utils.to_numpy(objectives.dsd_loss_weight(t, 0.05))
    np.testing.assert_allclose(weights, [1.0, 4.0, 400.0, 400.0], rtol=1e-5)


def test_velocity_losses_in_numpy():
    online, target, noise, v, t = _batch()
    np.testing.assert_allclose(
        _loss("naive", v, online, None, noise, t),
        np.mean((v - (online - noise)) ** 2),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        _loss("decoupled", v, online, target, noise, t),
        np.mean((v - (target - noise)) ** 2),
        rtol=1e-5,
    )


def test_velocity_from_prediction():
    online, _, noise, z_hat, t = _batch()
    z_t = t[:, None, None] * online + (1 - t[:, None, None]) * noise
    v = test_utils.to_numpy(
        objectives.velocity_from_prediction("dsd", z_hat, z_t, t, 1e-4)
    )
    np.testing.assert_allclose(
        v, (z_hat - z_t) / (1 - t[:, None, None]), rtol=1e-4, atol=1e-5
    )
    # A scalar time broadcasts over the batch; 1 - t is clamped at t_min.
    v = test_utils.to_numpy(
        objectives.velocity_from_prediction("dsd", z_hat, z_t, 1.0, 0.05)
    )
    np.testing.assert_allclose(v, (z_hat - z_t) / 0.05, rtol=1e-4)
    for objective in ("naive", "decoupled"):
        v = objectives.velocity_from_prediction(objective, z_hat, z_t, t, 0.05)
        np.testing.assert_array_equal(test_utils.to_numpy(v), z_hat)


def test_mode_tables_match_the_design():
    assert list(objectives.OBJECTIVES) == ["naive", "decoupled", "dsd"]
    records = objectives.OBJECTIVES.values()
    assert [o.uses_target_latent for o in records] == [False, True, True]
    assert [o.output for o in records] == [
        objectives.VELOCITY,
        objectives.VELOCITY,
        objectives.CLEAN_LATENT,
    ]


# === (b) Where gradients flow ===


@pytest.mark.parametrize("objective", ["naive", "decoupled", "dsd"])
def test_gradient_into_online_latents(objective):
    online, target, noise, prediction, t = _batch()

    pred_, target_, noise_, t_ = _tensors(prediction, target, noise, t)
    if objective == "naive":
        target_ = None

    def loss(online_latents):
        # The prediction does not depend on the online latents here, so the
        # only path is through the diffusion target.
        return objectives.diffusion_loss(
            objective, pred_, online_latents, target_, noise_, t_, 0.05
        )

    value, grad = test_utils.value_and_grad(loss, online)
    assert np.isfinite(value)
    if objective == "naive":
        expected = -2.0 * (prediction - (online - noise)) / online.size
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)
        assert np.abs(grad).max() > 0
    else:
        np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("objective", ["decoupled", "dsd"])
def test_no_gradient_through_online_teacher(objective):
    # teacher="online": the target IS the online latent, stop-gradient'ed.
    _, _, noise, prediction, t = _batch()
    online = _batch(seed=1)[0]

    pred_, noise_, t_ = _tensors(prediction, noise, t)

    def loss(online_latents):
        return objectives.diffusion_loss(
            objective,
            pred_,
            online_latents,
            online_latents,
            noise_,
            t_,
            0.05,
        )

    _, grad = test_utils.value_and_grad(loss, online)
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("objective", ["naive", "dsd"])
def test_gradient_into_online_latents_held_in_a_variable(objective):
    # The same check through trainable weights, the way fit() sees them:
    # a variable feeds both the online and (stop-gradient) target latents.
    online, _, noise, prediction, t = _batch()
    latents = keras.Variable(online, name="latents")
    pred_, noise_, t_ = _tensors(prediction, noise, t)

    def loss():
        return objectives.diffusion_loss(
            objective, pred_, latents, latents, noise_, t_, 0.05
        )

    value, (grad,) = test_utils.value_and_grad(loss, [latents])
    assert np.isfinite(value)
    if objective == "naive":
        expected = -2.0 * (prediction - (online - noise)) / online.size
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)
    else:
        np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("objective", ["naive", "decoupled", "dsd"])
def test_no_gradient_into_target_latents(objective):
    online, target, noise, prediction, t = _batch()

    pred_, online_, noise_, t_ = _tensors(prediction, online, noise, t)

    def loss(target_latents):
        return objectives.diffusion_loss(
            objective, pred_, online_, target_latents, noise_, t_, 0.05
        )

    value, grad = test_utils.value_and_grad(loss, target)
    assert np.isfinite(value)
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("objective", ["naive", "decoupled", "dsd"])
def test_gradient_into_prediction(objective):
    online, target, noise, prediction, t = _batch()

    online_, target_, noise_, t_ = _tensors(online, target, noise, t)

    def loss(pred):
        return objectives.diffusion_loss(
            objective, pred, online_, target_, noise_, t_, 0.05
        )

    _, grad = test_utils.value_and_grad(loss, prediction)
    if objective == "dsd":
        residual = prediction - target
        weight = 1.0 / np.maximum(1.0 - t, 0.05) ** 2
        expected = 2.0 * weight[:, None, None] * residual / online.size
    else:
        anchor = online if objective == "naive" else target
        expected = 2.0 * (prediction - (anchor - noise)) / online.size
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


# === (c) Bad arguments ===


def test_unknown_objective_raises():
    online, target, noise, prediction, t = _tensors(*_batch())
    with pytest.raises(ValueError, match="objective='velocity'"):
        objectives.diffusion_loss(
            "velocity", prediction, online, target, noise, t, 0.05
        )
    with pytest.raises(ValueError, match="objective"):
        objectives.check_objective("DSD")


def test_a_new_mode_is_one_table_entry(monkeypatch):
    # A throwaway mode registered only in the table: the loss, the velocity
    # and the checks all read it from there. Its loss is a plain unweighted
    # clean-latent MSE, computed here in numpy.
    record = objectives.Objective(
        "unweighted",
        objectives.CLEAN_LATENT,
        True,
        lambda p, online, target, noise, t, t_min: keras.ops.mean(
            keras.ops.square(p - target), axis=(1, 2)
        ),
    )
    monkeypatch.setitem(objectives.OBJECTIVES, "unweighted", record)
    online, target, noise, z_hat, t = _batch()
    np.testing.assert_allclose(
        _loss("unweighted", z_hat, online, target, noise, t),
        np.mean((z_hat - target) ** 2),
        rtol=1e-5,
    )
    z_t = online
    v = test_utils.to_numpy(
        objectives.velocity_from_prediction("unweighted", z_hat, z_t, t, 0.05)
    )
    np.testing.assert_allclose(
        v, (z_hat - z_t) / (1 - t[:, None, None]), rtol=1e-4, atol=1e-5
    )
    assert objectives.check_objective("unweighted") == "unweighted"


def test_the_task_reads_a_mode_registered_at_run_time(monkeypatch):
    # A mode added to the table after import: the task builds its teacher
    # and its loss from the record. The loss is the mean square of the
    # teacher's latent, and the latent LayerNorm (no scale, no centre)
    # gives every token zero mean and unit variance over its channels, so
    # the loss is 1 (up to the norm's epsilon) whatever the weights are.
    from keras_dsd.models.dsd.dsd_image_generator import DSDImageGenerator

    record = objectives.Objective(
        "target_power",
        objectives.CLEAN_LATENT,
        True,
        lambda p, online, target, noise, t, t_min: keras.ops.mean(
            keras.ops.square(target), axis=(1, 2)
        ),
    )
    monkeypatch.setitem(objectives.OBJECTIVES, "target_power", record)
    backbone = test_utils.randomize_weights(test_utils.tiny_backbone())
    model = DSDImageGenerator(backbone, objective="target_power")
    assert model.teacher_backbone is not None
    images = test_utils.random_images(4)
    labels = test_utils.random_labels(4)
    model.compute_loss(images, labels)
    diffusion_loss = test_utils.to_numpy(model.diffusion_loss_tracker.result())
    np.testing.assert_allclose(diffusion_loss, 1.0, rtol=1e-4)


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="objective='vpred'.*Expected one of"):
        objectives.get("vpred")
