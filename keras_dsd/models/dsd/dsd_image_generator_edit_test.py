"""Image-to-image, inpainting and interpolation with `DSDImageGenerator`.

The fast tests use a tiny network with fixed random weights and the
compiled sampling path of the backend; the `large` ones train the digits
recipe and score the edits with the project's digit classifier.
"""

import keras
import numpy as np
import pytest

from keras_dsd.models.dsd.dsd_image_generator import DSDImageGenerator
from keras_dsd.testing import test_utils

BACKEND = keras.backend.backend()
LABELS = [0, 1, 2]


def _model(**kwargs):
    backbone = test_utils.randomize_weights(
        test_utils.tiny_backbone(), seed=1, stddev=0.2
    )
    kwargs = {"teacher_decay": 0.5, "ema_decay": 0.9, "seed": 0, **kwargs}
    return DSDImageGenerator(backbone, **kwargs)


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def images():
    return test_utils.random_images(3, seed=4)


def _velocity(network, z, t, labels):
    """The clean-latent velocity `(z_hat - z) / (1 - t)` in numpy."""
    prediction = test_utils.to_numpy(
        network.denoise(
            z.astype("float32"), np.full((len(z),), t, "float32"), labels
        )
    )
    return (prediction - z) / (1.0 - t)


# === Image-to-image ===


def test_strength_zero_is_decode_of_encode(model, images):
    edited = model.generate(LABELS, images=images, strength=0.0, seed=0)
    expected = model.decode(model.encode(images))
    assert edited.shape == images.shape and edited.dtype == np.uint8
    assert np.abs(edited.astype(int) - expected).max() <= 1


def test_strength_one_is_generation_from_the_same_noise(model, images):
    kwargs = {"num_steps": 2, "seed": 3, "return_latents": True}
    _, generated = model.generate(LABELS, **kwargs)
    _, edited = model.generate(LABELS, images=images, strength=1.0, **kwargs)
    np.testing.assert_allclose(edited, generated, atol=1e-5)


def test_image_to_image_matches_an_independent_loop(model, images):
    # Euler, 4 steps, strength 0.5: the last 2 steps of the grid
    # 0, 1/4, 1/2, 3/4, 1, from z = 0.5 * E(x) + 0.5 * eps, written out in
    # numpy around the sampling-EMA network.
    labels = np.array([2, 0, 1], "int32")
    _, latents = model.generate(
        labels,
        images=images,
        strength=0.5,
        num_steps=4,
        sampler="euler",
        seed=5,
        return_latents=True,
    )
    network = model.ema_backbone
    clean = test_utils.to_numpy(
        network.encode(images.astype("float32") / 127.5 - 1.0)
    )
    eps = np.random.default_rng(5).standard_normal(clean.shape)
    z = 0.5 * clean + 0.5 * eps
    z = z + 0.25 * _velocity(network, z, 0.5, labels)
    z = z + 0.25 * _velocity(network, z, 0.75, labels)
    np.testing.assert_allclose(latents, z, atol=1e-4)


@pytest.mark.parametrize(
    "sampler,strength,expected",
    [
        ("heun", 1.0, 7),
        ("heun", 0.5, 3),
        ("heun", 0.25, 1),
        ("heun", 0.1, 0),  # round(0.4) = 0 steps
        ("euler", 0.6, 2),  # round(2.4) = 2 steps
        ("euler", 0.0, 0),
    ],
)
def test_network_evaluations_scale_with_strength(
    model, sampler, strength, expected, monkeypatch
):
    # The documented count: m = round(strength * num_steps) steps, m
    # evaluations for Euler, 2m - 1 for Heun, none at m = 0. Counted on an
    # uncompiled call of `generate_step`, which `generate` compiles.
    network = model.inference_backbone
    calls = []
    denoise = network.denoise

    def recording_denoise(z, t, labels):
        calls.append(1)
        return denoise(z, t, labels)

    monkeypatch.setattr(network, "denoise", recording_denoise)
    num_steps = 4
    start = num_steps - int(np.floor(strength * num_steps + 0.5))
    z = np.zeros((3, 4, 4), "float32")
    with test_utils.eager_loops():
        model.generate_step(
            keras.ops.convert_to_tensor(z),
            keras.ops.convert_to_tensor(LABELS, "int32"),
            num_steps=num_steps,
            sampler=sampler,
            start=keras.ops.convert_to_tensor(start, "int32"),
            clean_latents=keras.ops.convert_to_tensor(z),
            known_tokens=keras.ops.convert_to_tensor(np.zeros((3, 4), bool)),
        )
    assert len(calls) == expected


def test_new_scalar_values_do_not_compile_again(monkeypatch, images):
    # One compiled function per batch shape and option set: new strengths,
    # guidance scales and time shifts are inputs, not constants. JAX and
    # TensorFlow trace `generate_step` once per compiled function; PyTorch
    # runs eagerly, so there only the cache of functions is checked.
    model = _model()
    traces = []
    generate_step = model.generate_step

    def counting_step(*args, **kwargs):
        traces.append(1)
        return generate_step(*args, **kwargs)

    monkeypatch.setattr(model, "generate_step", counting_step)
    kwargs = {"num_steps": 2, "seed": 0}
    for strength in (0.5, 0.0, 1.0, 0.3):
        model.generate(LABELS, images=images, strength=strength, **kwargs)
    masks = np.zeros((3, 8, 8), bool)
    masks[:, 4:] = True
    model.generate(LABELS, images=images, masks=masks, **kwargs)
    for scale, shift in ((2.0, 1.0), (3.0, 1.0), (3.0, 2.5)):
        model.generate(LABELS, guidance_scale=scale, time_shift=shift, **kwargs)
    model.generate(LABELS, guidance_scale=4.0, **kwargs)
    assert set(model._inference_functions) == {
        ("edit", 2, "heun", False, False),
        ("generate", 2, "heun", True, False),
        "encode",
    }
    if BACKEND != "torch":
        assert len(traces) == 2


# === Inpainting ===


def test_all_false_mask_returns_the_images(model, images):
    masks = np.zeros((3, 8, 8), bool)
    edited = model.generate(LABELS, images=images, masks=masks, seed=0)
    np.testing.assert_array_equal(edited, images)


def test_pixels_outside_a_half_mask_are_unchanged(model, images):
    masks = np.zeros((3, 8, 8), bool)
    masks[:, 4:] = True  # the bottom row of 4x4 patches
    edited, latents = model.generate(
        LABELS,
        images=images,
        masks=masks,
        num_steps=2,
        seed=0,
        return_latents=True,
    )
    np.testing.assert_array_equal(edited[~masks], images[~masks])
    assert not np.array_equal(edited[masks], images[masks])
    # Tokens 0 and 1 (top patches) end on the input's latents; tokens 2
    # and 3 are generated.
    clean = model.encode(images)
    np.testing.assert_allclose(latents[:, :2], clean[:, :2], atol=1e-6)
    assert np.abs(latents[:, 2:] - clean[:, 2:]).max() > 0.1


def test_known_tokens_follow_the_noised_input(model, images):
    # Euler, 2 steps, one pixel masked in patch 3: at t = 0.5 the network
    # sees tokens 0-2 at 0.5 * E(x) + 0.5 * eps (the input noised to that
    # time) and token 3 where the first step took it.
    network = model.ema_backbone
    masks = np.zeros((3, 8, 8), bool)
    masks[:, 7, 7] = True
    _, latents = model.generate(
        LABELS,
        images=images,
        masks=masks,
        num_steps=2,
        sampler="euler",
        seed=1,
        return_latents=True,
    )
    labels = np.array(LABELS, "int32")
    clean = model.encode(images).astype("float64")
    eps = np.random.default_rng(1).standard_normal(clean.shape)
    z = eps + 0.5 * _velocity(network, eps, 0.0, labels)
    z[:, :3] = 0.5 * clean[:, :3] + 0.5 * eps[:, :3]
    z = z + 0.5 * _velocity(network, z, 0.5, labels)
    np.testing.assert_allclose(latents[:, 3], z[:, 3], atol=1e-4)
    np.testing.assert_allclose(latents[:, :3], clean[:, :3], atol=1e-6)


# === Interpolation ===


def test_interpolation_path(model, images):
    a, b = images, images[::-1]
    path = model.interpolate(a, b, num=3)
    assert path.shape == (3, 3, 8, 8, 3) and path.dtype == np.uint8
    za = model.encode(a).astype("float64")
    zb = model.encode(b).astype("float64")
    # The spherical midpoint: (a + b) / (2 cos(omega / 2)).
    flat_a, flat_b = za.reshape(3, -1), zb.reshape(3, -1)
    cosine = np.sum(flat_a * flat_b, 1) / (
        np.linalg.norm(flat_a, axis=1) * np.linalg.norm(flat_b, axis=1)
    )
    half_angle = np.arccos(np.clip(cosine, -1, 1)) / 2
    middle = (za + zb) / (2 * np.cos(half_angle))[:, None, None]
    for index, expected in ((0, za), (1, middle), (2, zb)):
        decoded = model.decode(expected.astype("float32"))
        assert np.abs(path[:, index].astype(int) - decoded).max() <= 1


def test_denoised_interpolation_ends_match_image_to_image(model, images):
    # With strength s, the ends of the path are `generate` at s with the
    # same noise, since the spherical path starts and ends on them.
    kwargs = {"strength": 0.5, "num_steps": 2, "seed": 2}
    path = model.interpolate(
        images, images[::-1], class_labels=LABELS, num=4, **kwargs
    )
    assert path.shape == (3, 4, 8, 8, 3)
    start = model.generate(LABELS, images=images, **kwargs)
    assert np.abs(path[:, 0].astype(int) - start).max() <= 1


# === Bad input ===


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"strength": -0.1}, r"`strength` must be a finite float in \[0, 1\]"),
        ({"strength": 1.5}, r"strength=1.5"),
        ({"strength": float("nan")}, r"strength=nan"),
        ({"strength": float("inf")}, r"strength=inf"),
        ({"strength": "half"}, r"strength='half'"),
        ({"masks": np.zeros((3, 8, 4), bool)}, r"`masks` must be a bool"),
        ({"masks": np.zeros((3, 8, 8), "float32")}, r"dtype float32"),
        ({"masks": np.zeros((3, 8, 8, 1), bool)}, r"shape \(3, 8, 8\)"),
        ({"images": np.zeros((3, 16, 16, 3), "uint8")}, r"`images` has size"),
        ({"images": np.zeros((2, 8, 8, 3), "uint8")}, r"one image per class"),
        (
            {"images": None, "masks": np.zeros((3, 8, 8), bool)},
            r"`masks` needs",
        ),
        ({"images": None, "strength": 0.5}, r"`strength` needs `images`"),
    ],
)
def test_bad_edit_arguments_raise_before_compiling(images, kwargs, match):
    model = _model()
    kwargs = {"images": images, **kwargs}
    with pytest.raises(ValueError, match=match):
        model.generate(LABELS, num_steps=1, **kwargs)
    assert model._inference_functions == {}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num": 1}, r"`num` must be an int >= 2"),
        ({"strength": 0.5}, r"`class_labels` is needed"),
        ({"strength": 2.0}, r"strength=2.0"),
        ({"class_labels": [0]}, r"one label per pair"),
    ],
)
def test_bad_interpolation_arguments(images, kwargs, match):
    model = _model()
    with pytest.raises(ValueError, match=match):
        model.interpolate(images, images, **kwargs)
    with pytest.raises(ValueError, match=r"`images_b` must have the shape"):
        model.interpolate(images, images[:2])
    assert model._inference_functions == {}


# === A trained digits model (slow) ===

# Training the digits recipe takes minutes; it runs on JAX, the fastest
# trainer on a CPU. The editing code itself is checked on every backend
# by the tests above, against independent loops.
trained_on_jax_only = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="trains the digits recipe for minutes: run on JAX only",
)


@pytest.fixture(scope="module")
def digits():
    """The digits recipe trained for 6 epochs (840 steps, 1-2.5 minutes
    on JAX on a 2-core CPU) on 9 of every 10 digits, the digit classifier
    trained on the same split, and the held-out digits."""
    from keras_dsd import recipes
    from keras_dsd.datasets import load_mnist_digits
    from keras_dsd.metrics import train_digit_classifier

    images, labels = load_mnist_digits(image_size=32)
    held_out = np.arange(len(images)) % 10 == 0
    keras.utils.set_random_seed(0)
    recipe = recipes.get("digits")
    model = recipe.build_model()
    model.fit(
        images[~held_out],
        labels[~held_out],
        batch_size=recipe.batch_size,
        epochs=6,
        shuffle=True,
        verbose=0,
    )
    classifier = train_digit_classifier(images[~held_out], labels[~held_out])
    return model, classifier, images[held_out], labels[held_out]


@pytest.mark.large
@trained_on_jax_only
def test_trained_image_to_image_swaps_the_class(digits):
    from keras_dsd.metrics import classify_digits

    model, classifier, images, labels = digits
    rng = np.random.default_rng(0)
    targets = (labels + rng.integers(1, 10, len(labels))) % 10
    # Guidance scale 3, as the demo's samples. Measured 85 % and 83 %
    # recognised as the target class (two sampling seeds); 64 % after 4
    # epochs, and 92 % after 13 (49 % there without guidance). Chance is
    # 10 %.
    edited = model.generate(
        targets,
        images=images,
        strength=0.6,
        num_steps=16,
        seed=0,
        guidance_scale=3.0,
    )
    _, predicted = classify_digits(classifier, edited)
    accuracy = np.mean(predicted == targets)
    print(f"image-to-image at strength 0.6 to another class: {accuracy:.3f}")
    assert accuracy >= 0.7


@pytest.mark.large
@trained_on_jax_only
def test_trained_inpainting_keeps_the_class(digits):
    from keras_dsd.metrics import classify_digits

    model, classifier, images, labels = digits
    masks = np.zeros(images.shape[:3], bool)
    masks[:, 16:] = True
    # Measured 96 % and 97 % (two sampling seeds) with guidance scale 3;
    # after 13 epochs, 96 % with it and 91 % without.
    edited = model.generate(
        labels,
        images=images,
        masks=masks,
        num_steps=16,
        seed=0,
        guidance_scale=3.0,
    )
    np.testing.assert_array_equal(edited[~masks], images[~masks])
    _, predicted = classify_digits(classifier, edited)
    accuracy = np.mean(predicted == labels)
    print(f"inpainting the bottom half with its own label: {accuracy:.3f}")
    assert accuracy >= 0.9
