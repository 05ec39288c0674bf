"""Recipe study: which training settings make DSD work on the digits.

Trains `DSDImageGenerator` on a fixed split of the 5,000 embedded MNIST
digits (4,000 to train on, every 5th digit - 1,000, 100 per class - held
out and never trained on), once per (configuration, seed), and scores each
run with the library's own tools:

- `class_accuracy`: fraction of samples a digit classifier (trained once on
  the training split, cached in the results folder) assigns to the class
  they were generated for;
- `frechet_distance`: Fréchet distance of that classifier's 64-d features,
  samples vs the 1,000 held-out digits, beside the real-vs-real floor (as
  many training digits as samples, class-balanced, vs the same held-out
  digits);
- `precision` / `recall`: improved precision and recall on the same
  features (fidelity / diversity);
- `reconstruction_psnr_db` on the held-out digits; `latent_effective_rank`
  and `latent_std` of their encodings.

Every run is one JSON line in `<results-dir>/results.jsonl` (configuration,
seed, budget, steps, wall time, machine load, versions, metrics, status).
The file is resumable: runs already in it (same configuration hash, seed and
budget) are skipped, so a crashed study restarts where it stopped. A run
whose loss turns non-finite is recorded as `failed` and the study goes on.
A results file written by another schema version is refused. The trained
model of each run is saved as a preset (`runs/`, not committed) so that sampling
settings (sampler, steps, grid shift, guidance) can be scored later without
retraining (`resample`).

    # the screen: every configuration x 3 seeds, 1,500 steps each
    KERAS_BACKEND=jax python benchmarks/recipe_study.py train --steps 1500
    # a wall-clock budget instead of a step count
    KERAS_BACKEND=jax python benchmarks/recipe_study.py train --minutes 8 \\
        --only defaults,digits
    # sampling-time factors on the saved weights
    KERAS_BACKEND=jax python benchmarks/recipe_study.py resample \\
        --only digits --guidance-scales 1.5,3
    # guidance only for sampler times 0.3 <= t < 1 (t = 0 is noise)
    KERAS_BACKEND=jax python benchmarks/recipe_study.py resample \\
        --only digits --guidance-scales 3 \\
        --guidance-intervals none,0.3:1
    # tables (markdown) and plots (PNG)
    python benchmarks/recipe_study.py report --plots docs/recipe_study
"""

import argparse
import calendar
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time

import keras
import numpy as np

import keras_dsd

SCHEMA = "keras_dsd.recipe_study/2"
RESULTS_FILE = "results.jsonl"
CLASSIFIER_FILE = "digit_classifier.keras"
DEFAULT_RESULTS_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "recipe_study"
)

# === Configurations ===

# `DSDImageGenerator`'s defaults before this study changed them
# (2026-12-01). Every configuration is written as changes to these, so that
# a configuration's name keeps its meaning when the library defaults move;
# "defaults" spells out the library's defaults of the day (read from the
# constructor's signature when the study starts). The resolved values are
# recorded in each line.
FORMER_DEFAULTS = {
    "objective": "dsd",
    "teacher": "ema",
    "teacher_decay": 0.999,
    "ema_decay": 0.9999,
    "ema_warmup": True,
    "diffusion_loss_weight": 1.0,
    "t_min": 0.05,
    "time_distribution": "logit_normal",
    "time_mean": 0.0,
    "time_std": 1.0,
    "label_dropout": 0.0,
}
# Training settings outside `DSDImageGenerator`'s constructor.
STUDY_DEFAULTS = {
    "preset": "dsd_tiny",
    "backbone_overrides": {},
    "batch_size": 32,
    # None: `compile()`'s own optimizer (what a new user gets).
    "learning_rate": None,
    "warmup_steps": 0,
    "clipnorm": None,
    # "constant" after the warm-up, or "cosine": decay to 0 at the end of
    # a step budget.
    "lr_schedule": "constant",
}


# Each configuration changes FORMER_DEFAULTS by a few settings. The
# order is the order of the screen: the likely causes first, so that a
# partial study already answers something.
# The library's `digits` recipe (examples/train_digits.py's settings; its
# sampler: Heun, 16 steps): its optimiser, and the model settings where it
# differs from the library defaults.
_DIGITS = keras_dsd.recipes.get("digits")
_LEARNING_RATE = {
    "learning_rate": _DIGITS.learning_rate,
    "warmup_steps": _DIGITS.warmup_steps,
    "clipnorm": _DIGITS.clipnorm,
}
_DIGITS_DEMO = {
    **{
        name: value
        for name, value in _DIGITS.generator.items()
        if FORMER_DEFAULTS[name] != value
    },
    **_LEARNING_RATE,
}
CONFIGS = {
    # DSDImageGenerator(backbone) and compile() with no arguments: what a
    # new user gets today.
    "defaults": keras_dsd.recipes.generator_defaults(),
    # The `digits` recipe (examples/train_digits.py).
    "digits": dict(_DIGITS_DEMO),
    # One change each to the recipe.
    "digits+label_dropout_0": {**_DIGITS_DEMO, "label_dropout": 0.0},
    "digits+cosine": {**_DIGITS_DEMO, "lr_schedule": "cosine"},
    "digits+diffusion_weight_3": {**_DIGITS_DEMO, "diffusion_loss_weight": 3.0},
    "digits+t_min_0.05": {**_DIGITS_DEMO, "t_min": 0.05},
    # Capacity: twice the latent channels (12x compression instead of 24x),
    # or 6 transformer blocks instead of 4 (1.5x the step cost).
    "digits+latent_16": {
        **_DIGITS_DEMO,
        "backbone_overrides": {"latent_channels": 16},
    },
    "digits+depth_6": {**_DIGITS_DEMO, "backbone_overrides": {"num_layers": 6}},
    # The recipe's loss clamp on the library defaults.
    "defaults+t_min_0.25": {
        **keras_dsd.recipes.generator_defaults(),
        "t_min": 0.25,
    },
    # The defaults with the former default times (the reason for the new).
    "defaults+times_0_1": {
        **keras_dsd.recipes.generator_defaults(),
        "time_mean": 0.0,
        "time_std": 1.0,
    },
    # The collapse study: the objectives at the library defaults.
    "defaults+naive": {
        **keras_dsd.recipes.generator_defaults(),
        "objective": "naive",
    },
    "defaults+decoupled": {
        **keras_dsd.recipes.generator_defaults(),
        "objective": "decoupled",
    },
}


def resolve_config(overrides):
    """The full configuration: `FORMER_DEFAULTS` and `STUDY_DEFAULTS`
    updated by `overrides`."""
    config = {**FORMER_DEFAULTS, **STUDY_DEFAULTS}
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(
            f"Unknown setting(s) {unknown} in a study configuration; known: "
            f"{sorted(config)}."
        )
    config.update(overrides)
    return config


def config_hash(config):
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def run_key(config, seed, budget):
    budget_text = json.dumps(budget, sort_keys=True)
    return f"{config_hash(config)}/seed{seed}/{budget_text}"


# === Results file ===


def read_results(path):
    """The records of a results file; `[]` if it does not exist.

    Raises:
        ValueError: the file holds a line of another schema or a line that
            is not JSON (nothing is written to it then).
    """
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}, line {number} is not JSON ({error}); fix or "
                    "remove that line before resuming."
                ) from None
            schema = record.get("schema") if isinstance(record, dict) else None
            if schema != SCHEMA:
                raise ValueError(
                    f"{path}, line {number} has schema {schema!r}; this "
                    f"study writes {SCHEMA!r}. Use another --results-dir."
                )
            records.append(record)
    return records


def append_record(path, record):
    """Appends one JSON line with a single write, flushed to disk."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


# === Data and scoring ===


class Scorer:
    """The fixed split and the digit classifier that scores every run."""

    def __init__(
        self,
        results_dir,
        samples_per_class,
        classifier_epochs=20,
        num_real=None,
    ):
        images, labels = keras_dsd.datasets.load_mnist_digits(image_size=32)
        held_out = np.arange(len(images)) % 5 == 0
        self.train_images = images[~held_out]
        self.train_labels = labels[~held_out]
        self.test_images = images[held_out]
        self.test_labels = labels[held_out]
        if num_real is not None:  # tests: a smaller split
            self.train_images = self.train_images[::num_real]
            self.train_labels = self.train_labels[::num_real]
            self.test_images = self.test_images[::num_real]
            self.test_labels = self.test_labels[::num_real]
        self.extractor = self._classifier(results_dir, classifier_epochs)
        features, predicted = keras_dsd.metrics.classify_digits(
            self.extractor, self.test_images
        )
        self.test_features = features
        self.test_statistics = keras_dsd.metrics.feature_statistics(
            features, on_singular="ignore"
        )
        # The floor: as many real training digits as a run generates (the
        # first `samples_per_class` of each class; the Fréchet distance is
        # biased upwards at small sample counts), against the same
        # held-out digits.
        floor_images = np.concatenate(
            [
                self.train_images[self.train_labels == c][:samples_per_class]
                for c in range(10)
            ]
        )
        floor_features, _ = keras_dsd.metrics.classify_digits(
            self.extractor, floor_images
        )
        self.info = {
            "classifier_epochs": classifier_epochs,
            "classifier_accuracy": float(
                np.mean(predicted == self.test_labels)
            ),
            "num_train": len(self.train_images),
            "num_held_out": len(self.test_images),
            "frechet_floor": self._frechet(floor_features),
            "frechet_floor_samples": len(floor_images),
        }

    def _classifier(self, results_dir, epochs):
        path = os.path.join(results_dir, CLASSIFIER_FILE)
        if os.path.exists(path):
            return keras.saving.load_model(path)
        extractor = keras_dsd.metrics.train_digit_classifier(
            self.train_images, self.train_labels, epochs=epochs, seed=0
        )
        tmp_path = path + ".tmp.keras"
        extractor.save(tmp_path)
        os.replace(tmp_path, path)
        return extractor

    def _frechet(self, features):
        mu, sigma = keras_dsd.metrics.feature_statistics(
            features, on_singular="ignore"
        )
        return float(
            keras_dsd.metrics.frechet_distance(mu, sigma, *self.test_statistics)
        )

    def score_samples(self, samples, class_labels):
        features, predicted = keras_dsd.metrics.classify_digits(
            self.extractor, samples
        )
        scores = {
            "class_accuracy": float(np.mean(predicted == class_labels)),
            "frechet_distance": self._frechet(features),
        }
        scores.update(
            keras_dsd.metrics.precision_recall(self.test_features, features)
        )
        return scores

    def score_autoencoder(self, model):
        latents = model.encode(self.test_images)
        reconstructions = model.decode(latents)
        return {
            "reconstruction_psnr_db": float(
                keras_dsd.metrics.psnr(self.test_images, reconstructions)
            ),
            "latent_effective_rank": float(
                keras_dsd.metrics.effective_rank(latents)
            ),
            "latent_std": float(keras_dsd.metrics.latent_std(latents)),
        }


# === One run ===


def build_model(config, seed, total_steps=None):
    backbone = keras_dsd.models.DSDBackbone.from_preset(
        config["preset"], **config["backbone_overrides"]
    )
    model_kwargs = {
        name: config[name] for name in keras_dsd.recipes.generator_defaults()
    }
    model = keras_dsd.models.DSDImageGenerator(
        backbone=backbone, seed=seed, **model_kwargs
    )
    if config["learning_rate"] is None:
        return model  # compiled at construction, as a new user gets it
    if config["lr_schedule"] == "cosine":
        if total_steps is None:
            raise ValueError(
                "lr_schedule 'cosine' decays to 0 at the end of a step "
                "budget: use --steps, not --minutes."
            )
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=total_steps - config["warmup_steps"],
            warmup_target=config["learning_rate"],
            warmup_steps=config["warmup_steps"],
        )
    else:
        learning_rate = keras_dsd.recipes.warmup_schedule(
            config["learning_rate"], config["warmup_steps"]
        )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=learning_rate,
            weight_decay=0.0,
            clipnorm=config["clipnorm"],
        )
    )
    return model


class StepLimit(keras.callbacks.Callback):
    """Stops `fit` after exactly `steps` optimizer steps."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1
        if self.count >= self.steps:
            self.model.stop_training = True


class NonFiniteLoss(keras.callbacks.Callback):
    """Stops `fit` at the first non-finite loss and remembers the step."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.failed_at_step = None

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.failed_at_step = self.count
            self.model.stop_training = True


def evaluation_name(
    sampler, num_steps, time_shift, guidance_scale, guidance_interval=None
):
    """E.g. `heun16_shift1_unguided`, `heun16_shift1_cfg2`,
    `heun16_shift1_cfg2_interval0.3-1` (guidance for 0.3 <= t < 1 only)."""
    guidance = (
        "unguided" if guidance_scale is None else f"cfg{guidance_scale:g}"
    )
    name = f"{sampler}{num_steps}_shift{time_shift:g}_{guidance}"
    if guidance_interval is not None:
        t_low, t_high = guidance_interval
        name += f"_interval{t_low:g}-{t_high:g}"
    return name


def evaluation_times(sampler, num_steps, time_shift):
    """The times at which `sampler` evaluates the network (Euler: every grid
    time but the last; Heun: those, and again the inner ones for its
    corrector)."""
    grid = keras_dsd.samplers.time_grid(num_steps, time_shift)
    if sampler == "euler":
        return list(grid[:-1])
    if sampler == "heun":
        return list(grid[:-1]) + list(grid[1:-1])
    raise ValueError(f"evaluation_times: unknown sampler {sampler!r}")


def num_network_evaluations(
    sampler, num_steps, time_shift, guidance_scale, guidance_interval
):
    """NFE, a guided evaluation (a doubled batch) counting as 2."""
    nfe = keras_dsd.samplers.num_function_evaluations(sampler, num_steps)
    if guidance_scale is None:
        return nfe
    if guidance_interval is None:
        return 2 * nfe
    t_low, t_high = (np.float32(t) for t in guidance_interval)
    times = evaluation_times(sampler, num_steps, time_shift)
    assert len(times) == nfe
    return nfe + sum(1 for t in times if t_low <= t < t_high)


def evaluate(model, scorer, evaluations, samples_per_class, seed):
    """Scores each `(sampler, num_steps, time_shift, guidance_scale,
    guidance_interval)`; `{evaluation_name: scores}`."""
    class_labels = np.repeat(np.arange(10), samples_per_class)
    results = {}
    for evaluation in evaluations:
        sampler, num_steps, time_shift, guidance_scale, interval = evaluation
        start = time.time()
        samples = model.generate(
            class_labels,
            num_steps=num_steps,
            sampler=sampler,
            time_shift=time_shift,
            guidance_scale=guidance_scale,
            guidance_interval=interval,
            seed=seed + 1000,
            batch_size=250,
        )
        scores = scorer.score_samples(samples, class_labels)
        scores["nfe"] = num_network_evaluations(*evaluation)
        scores["seconds"] = round(time.time() - start, 1)
        results[evaluation_name(*evaluation)] = scores
    return results


def run_one(name, config, seed, budget, scorer, args):
    """Trains and scores one (configuration, seed); returns its record."""
    keras.utils.set_random_seed(seed)
    num_train = len(scorer.train_images)
    steps_per_epoch = math.ceil(num_train / config["batch_size"])
    model = build_model(config, seed, budget.get("steps"))
    non_finite = NonFiniteLoss()
    callbacks = [non_finite]
    if "steps" in budget:
        callbacks.append(StepLimit(budget["steps"]))
        epochs = math.ceil(budget["steps"] / steps_per_epoch)
    else:
        callbacks.append(keras_dsd.callbacks.TimeLimit(budget["minutes"]))
        epochs = 10**6
    load_before = os.getloadavg()
    start = time.time()
    history = model.fit(
        scorer.train_images,
        scorer.train_labels,
        batch_size=config["batch_size"],
        epochs=epochs,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )
    train_seconds = time.time() - start
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    record = {
        "schema": SCHEMA,
        "kind": "train",
        "key": run_key(config, seed, budget),
        "name": name,
        "config_hash": config_hash(config),
        "config": config,
        "seed": seed,
        "budget": budget,
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "load_average": [round(x, 2) for x in load_before + os.getloadavg()],
        "versions": versions(),
        "scoring": scorer.info,
        "final_epoch": {
            key: float(values[-1]) for key, values in history.history.items()
        },
    }
    if non_finite.failed_at_step is not None:
        record["status"] = "failed"
        record["reason"] = (
            f"non-finite loss at step {non_finite.failed_at_step}"
        )
        return record
    preset_dir = os.path.join(
        args.results_dir,
        "runs",
        f"{name}_{config_hash(config)}_seed{seed}_{_budget_tag(budget)}",
    )
    model.save_to_preset(preset_dir)
    record["preset"] = os.path.relpath(preset_dir, args.results_dir)
    record["autoencoder"] = scorer.score_autoencoder(model)
    evaluations = default_evaluations(config, args.guidance_scales)
    record["samples_per_class"] = args.samples_per_class
    record["evaluations"] = evaluate(
        model, scorer, evaluations, args.samples_per_class, seed
    )
    # The same unguided sampler on the weights that are not the sampling
    # EMA: the trained network itself, and the teacher if there is one.
    for source in ("online", "teacher"):
        with sampling_weights(model, source) as found:
            if found:
                scores = evaluate(
                    model, scorer, evaluations[:1], args.samples_per_class, seed
                )
                for name, values in scores.items():
                    record["evaluations"][f"{name}_{source}"] = values
    record["status"] = "ok"
    return record


class sampling_weights:
    """Samples from other weights: copies the trained network
    (`"online"`) or the teacher (`"teacher"`) into the sampling EMA for the
    duration of the block, then puts the EMA back. Yields whether that
    source exists."""

    def __init__(self, model, source):
        self.model = model
        self.source = {
            "online": model.backbone,
            "teacher": model.teacher_backbone,
        }[source]
        self.kept = None

    def __enter__(self):
        if self.source is None or self.model.ema_backbone is None:
            return False
        self.kept = self.model.ema_backbone.get_weights()
        self.model.ema_backbone.set_weights(self.source.get_weights())
        return True

    def __exit__(self, *exc):
        if self.kept is not None:
            self.model.ema_backbone.set_weights(self.kept)
        return False


def _budget_tag(budget):
    if "steps" in budget:
        return f"{budget['steps']}steps"
    return f"{budget['minutes']:g}min"


def default_evaluations(config, guidance_scales):
    """Heun, 16 steps (the demo's sampler), unguided; plus the guidance
    scales when the run was trained with label dropout."""
    evaluations = [("heun", 16, 1.0, None, None)]
    if config.get("label_dropout", 0.0) > 0:
        evaluations += [("heun", 16, 1.0, s, None) for s in guidance_scales]
    return evaluations


def versions():
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    found = {
        "keras_dsd": keras_dsd.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "cpu_count": os.cpu_count(),
    }
    if keras.backend.backend() == "jax":
        import jax

        found["jax"] = jax.__version__
        found["device"] = str(jax.devices()[0].platform)
    return found


# === Commands ===


def train(args):
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, RESULTS_FILE)
    done = {record["key"] for record in read_results(path)}
    budget = _budget(args)
    plan = []
    if args.order == "configs":  # all seeds of a configuration first
        pairs = [(name, seed) for name in args.names for seed in args.seeds]
    else:  # one seed of every configuration, then the next seed
        pairs = [(name, seed) for seed in args.seeds for name in args.names]
    for name, seed in pairs:
        config = resolve_config(args.configs[name])
        key = run_key(config, seed, budget)
        if key not in done:
            plan.append((name, config, seed, key))
    print(
        f"{len(plan)} run(s) to do, {len(done)} already in {path}", flush=True
    )
    if not plan:
        return 0
    scorer = Scorer(
        args.results_dir,
        args.samples_per_class,
        args.classifier_epochs,
        num_real=args.subsample,
    )
    print(f"scoring: {json.dumps(scorer.info)}", flush=True)
    for name, config, seed, key in plan:
        if args.stop_at and time.time() >= args.stop_at:
            print("--stop-at reached; not starting more runs", flush=True)
            break
        record = run_one(name, config, seed, budget, scorer, args)
        append_record(path, record)
        done.add(key)
        print(summarise(record), flush=True)
    return 0


def _budget(args):
    if args.minutes is None:
        return {"steps": args.steps}
    return {"minutes": args.minutes}


def resample(args):
    """Scores sampling settings on the saved models of the training runs
    of `--only` at the budget of `--steps` / `--minutes`."""
    path = os.path.join(args.results_dir, RESULTS_FILE)
    records = read_results(path)
    done = {record["key"] for record in records}
    budget = _budget(args)
    scorer = None
    # An interval applies to guided evaluations only.
    evaluations = [
        (sampler, num_steps, shift, scale, interval)
        for sampler in args.samplers
        for num_steps in args.num_steps
        for shift in args.time_shifts
        for scale in args.guidance_scales_or_none
        for interval in args.guidance_intervals
        if scale is not None or interval is None
    ]
    for run in records:
        if (
            run["kind"] != "train"
            or run["status"] != "ok"
            or run["name"] not in args.names
            or run["budget"] != budget
        ):
            continue
        preset = os.path.join(args.results_dir, run["preset"])
        if not os.path.isdir(preset):
            print(
                f"{run['name']} seed {run['seed']}: no saved model at {preset}"
            )
            continue
        todo = [
            e
            for e in evaluations
            if f"{run['key']}/{evaluation_name(*e)}" not in done
            and evaluation_name(*e) not in run["evaluations"]
        ]
        if not todo:
            continue
        if scorer is None:
            scorer = Scorer(
                args.results_dir,
                args.samples_per_class,
                args.classifier_epochs,
                num_real=args.subsample,
            )
        model = keras_dsd.models.DSDImageGenerator.from_preset(preset)
        for evaluation in todo:
            scores = evaluate(
                model, scorer, [evaluation], args.samples_per_class, run["seed"]
            )
            name = evaluation_name(*evaluation)
            record = {
                "schema": SCHEMA,
                "kind": "sampling",
                "key": f"{run['key']}/{name}",
                "run_key": run["key"],
                "name": run["name"],
                "seed": run["seed"],
                "budget": run["budget"],
                "evaluation": name,
                "sampler": evaluation[0],
                "num_steps": evaluation[1],
                "time_shift": evaluation[2],
                "guidance_scale": evaluation[3],
                "guidance_interval": evaluation[4],
                "samples_per_class": args.samples_per_class,
                "scoring": scorer.info,
                "scores": scores[name],
                "status": "ok",
            }
            append_record(path, record)
            print(
                f"{run['name']} seed {run['seed']} {name}: "
                f"{json.dumps(scores[name])}",
                flush=True,
            )
    return 0


def summarise(record):
    text = (
        f"{record['name']} seed {record['seed']}: {record['status']}, "
        f"{record['steps']} steps in {record['train_seconds']} s"
    )
    if record["status"] != "ok":
        return text + f" ({record['reason']})"
    unguided = record["evaluations"]["heun16_shift1_unguided"]
    return (
        text + f"; acc {unguided['class_accuracy']:.3f}, FD "
        f"{unguided['frechet_distance']:.2f} (floor "
        f"{record['scoring']['frechet_floor']:.2f}), recall "
        f"{unguided['recall']:.3f}, PSNR "
        f"{record['autoencoder']['reconstruction_psnr_db']:.2f} dB"
    )


# === Report ===


def _mean_spread(values):
    values = np.asarray(values, "float64")
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{values.mean():.3g} ± {values.std(ddof=1):.2g}"


def summary_rows(records, evaluation="heun16_shift1_unguided"):
    """Per (name, budget): seeds, failures, and lists of each metric."""
    rows = {}
    for record in records:
        if record["kind"] != "train":
            continue
        key = (record["name"], json.dumps(record["budget"], sort_keys=True))
        row = rows.setdefault(key, {"seeds": [], "failed": 0, "values": {}})
        row["seeds"].append(record["seed"])
        if record["status"] != "ok":
            row["failed"] += 1
            continue
        metrics = dict(record["autoencoder"])
        metrics.update(record["evaluations"].get(evaluation, {}))
        metrics["fd_over_floor"] = (
            metrics["frechet_distance"] / record["scoring"]["frechet_floor"]
        )
        metrics["train_seconds"] = record["train_seconds"]
        metrics["steps"] = record["steps"]
        for metric, value in metrics.items():
            row["values"].setdefault(metric, []).append(value)
    return rows


REPORT_COLUMNS = (
    ("class_accuracy", "class acc."),
    ("frechet_distance", "FD"),
    ("fd_over_floor", "FD / floor"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("reconstruction_psnr_db", "PSNR dB"),
    ("latent_effective_rank", "latent rank"),
    ("latent_std", "latent std"),
    ("train_seconds", "train s"),
)


def report(args):
    records = read_results(os.path.join(args.results_dir, RESULTS_FILE))
    rows = summary_rows(records)
    order = {name: i for i, name in enumerate(CONFIGS)}
    header = ["config", "budget", "seeds (failed)"] + [
        label for _, label in REPORT_COLUMNS
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (name, budget), row in sorted(
        rows.items(), key=lambda item: (order.get(item[0][0], 99), item[0])
    ):
        cells = [
            name,
            budget.strip("{}").replace('"', ""),
            f"{len(row['seeds'])} ({row['failed']})",
        ]
        for metric, _ in REPORT_COLUMNS:
            values = row["values"].get(metric)
            cells.append(_mean_spread(values) if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    several = [
        r
        for r in records
        if r["kind"] == "sampling"
        or (r["status"] == "ok" and len(r["evaluations"]) > 1)
    ]
    if several:  # guidance scales or resampled sampler settings
        print()
        print(sampling_table(records))
    if args.plots:
        plot(rows, records, args.plots)
    return 0


def _budget_label(budget):
    return ", ".join(f"{key}: {value}" for key, value in budget.items())


def sampling_table(records):
    groups = {}
    for config, budget, name, scores, _ in scored_evaluations(records):
        groups.setdefault((config, budget, name), []).append(scores)
    lines = [
        "| config | budget | sampling | NFE | seeds | class acc. | FD | "
        "precision | recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, budget, evaluation), scores in sorted(groups.items()):
        cells = [
            name,
            budget,
            evaluation,
            str(scores[0]["nfe"]),
            str(len(scores)),
        ]
        for metric in (
            "class_accuracy",
            "frechet_distance",
            "precision",
            "recall",
        ):
            cells.append(_mean_spread([s[metric] for s in scores]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, records, prefix):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    order = {name: i for i, name in enumerate(CONFIGS)}
    items = sorted(
        ((k, r) for k, r in rows.items() if r["values"]),
        key=lambda item: (order.get(item[0][0], 99), item[0]),
    )
    labels = [
        f"{name}\n{budget.strip('{}')}".replace('"', "")
        for (name, budget), _ in items
    ]
    metrics = (
        ("class_accuracy", "class accuracy (unguided)"),
        ("fd_over_floor", "Fréchet distance / real floor"),
        ("recall", "recall"),
        ("reconstruction_psnr_db", "held-out PSNR (dB)"),
    )
    figure, axes = plt.subplots(
        len(metrics), 1, figsize=(max(6, 0.9 * len(items)), 11), sharex=True
    )
    for axis, (metric, title) in zip(axes, metrics):
        for i, (_, row) in enumerate(items):
            values = row["values"].get(metric, [])
            axis.scatter([i] * len(values), values, color="tab:blue", s=14)
            if values:
                axis.hlines(np.mean(values), i - 0.3, i + 0.3, color="tab:red")
        axis.set_ylabel(title, fontsize=8)
        axis.grid(alpha=0.3)
    axes[-1].set_xticks(range(len(items)))
    axes[-1].set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    figure.suptitle("Recipe study: one dot per seed, red bar = mean")
    figure.tight_layout()
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    figure.savefig(prefix + "_screen.png", dpi=90)
    plt.close(figure)
    plot_guidance(records, prefix, plt)
    plot_nfe(records, prefix, plt)


def scored_evaluations(records):
    """`(config name, budget label, evaluation name, scores, floor)` of
    every scored sample set: the evaluations of training runs and the
    resampled ones."""
    found = []
    for record in records:
        if record.get("status") != "ok":
            continue
        floor = record["scoring"]["frechet_floor"]
        budget = _budget_label(record["budget"])
        if record["kind"] == "train":
            for name, scores in record["evaluations"].items():
                found.append((record["name"], budget, name, scores, floor))
        elif record["kind"] == "sampling":
            found.append(
                (
                    record["name"],
                    budget,
                    record["evaluation"],
                    record["scores"],
                    floor,
                )
            )
    return found


def guidance_curves(records):
    """{"config (budget)": {scale: [(accuracy, recall, fd / floor) per
    seed]}} for Heun-16 evaluations guided at every step; scale 0 stands
    for unguided."""
    curves = {}
    for config, budget, name, scores, floor in scored_evaluations(records):
        if not name.startswith("heun16_shift1_") or "_interval" in name:
            continue
        guidance = name.rsplit("_", 1)[1]
        scale = 0.0 if guidance == "unguided" else float(guidance[3:])
        label = f"{config} ({budget})"
        curves.setdefault(label, {}).setdefault(scale, []).append(
            (
                scores["class_accuracy"],
                scores["recall"],
                scores["frechet_distance"] / floor,
            )
        )
    return {name: c for name, c in curves.items() if len(c) > 1}


def nfe_curves(records):
    """{(config, budget, sampler, shift): {nfe: [(accuracy, fd / floor) per
    seed]}} for unguided evaluations."""
    curves = {}
    for config, budget, name, scores, floor in scored_evaluations(records):
        if not name.endswith("_unguided"):
            continue
        sampler_steps, shift = name.split("_")[:2]
        sampler = sampler_steps.rstrip("0123456789")
        key = (config, budget, sampler, shift)
        curves.setdefault(key, {}).setdefault(scores["nfe"], []).append(
            (scores["class_accuracy"], scores["frechet_distance"] / floor)
        )
    return {key: c for key, c in curves.items() if len(c) > 1}


def plot_nfe(records, prefix, plt):
    curves = {
        f"{config} ({budget}) {sampler} {shift}": by_nfe
        for (config, budget, sampler, shift), by_nfe in sorted(
            nfe_curves(records).items()
        )
    }
    _plot_curves(
        plt,
        curves,
        ("class accuracy", "FD / floor"),
        "network evaluations (unguided)",
        prefix + "_nfe.png",
        width=10,
        log2_x=True,
    )


def plot_guidance(records, prefix, plt):
    _plot_curves(
        plt,
        guidance_curves(records),
        ("class accuracy", "recall", "FD / floor"),
        "guidance scale (0: unguided)",
        prefix + "_guidance.png",
        width=12,
    )


def _plot_curves(plt, curves, titles, xlabel, path, width, log2_x=False):
    """One panel per score: `curves` is `{label: {x: [scores per seed]}}`,
    each score tuple in the order of `titles`; plots the mean over seeds."""
    if not curves:
        return
    figure, axes = plt.subplots(1, len(titles), figsize=(width, 3.5))
    for label, by_x in curves.items():
        xs = sorted(by_x)
        means = np.array([np.mean(by_x[x], axis=0) for x in xs])
        for i, axis in enumerate(axes):
            axis.plot(xs, means[:, i], marker="o", label=label)
    for axis, title in zip(axes, titles):
        if log2_x:
            axis.set_xscale("log", base=2)
        axis.set_xlabel(xlabel)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# === Command line ===


def _numbers(text, kind, flag):
    try:
        return [kind(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{flag} must be comma-separated numbers, got {text!r}"
        ) from None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("command", choices=["train", "resample", "report"])
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR)
    parser.add_argument(
        "--only",
        default=None,
        help="Comma-separated configurations, of: " + ", ".join(CONFIGS),
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--order",
        choices=["configs", "seeds"],
        default="configs",
        help="train: all seeds of one configuration before "
        "the next ('configs'), or one seed of every "
        "configuration before the next seed.",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=300,
        help="Budget: optimizer steps per run.",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="Budget: wall-clock training minutes per run (replaces --steps).",
    )
    parser.add_argument("--samples-per-class", type=int, default=50)
    parser.add_argument(
        "--guidance-scales",
        default="1.5,3",
        help="Scales scored for runs trained with label "
        "dropout (train), or the scales to score "
        "(resample; 'none' for unguided).",
    )
    parser.add_argument(
        "--guidance-intervals",
        default="none",
        help="resample: comma-separated guidance intervals LOW:HIGH "
        "(guidance only at sampler times LOW <= t < HIGH, t = 0 noise, "
        "t = 1 clean; 'none' for every step), e.g. 'none,0.3:1'. "
        "Applied to the guided scales only.",
    )
    parser.add_argument(
        "--samplers", default="heun", help="resample: comma-separated samplers."
    )
    parser.add_argument(
        "--num-steps",
        default="16",
        help="resample: comma-separated sampler steps.",
    )
    parser.add_argument(
        "--time-shifts",
        default="1",
        help="resample: comma-separated grid shifts.",
    )
    parser.add_argument("--classifier-epochs", type=int, default=20)
    parser.add_argument(
        "--stop-at",
        default=None,
        help="Start no new run after this UTC time (HH:MM).",
    )
    parser.add_argument(
        "--plots", default=None, help="report: path prefix of the PNG plots."
    )
    parser.add_argument(
        "--config-json",
        default=None,
        help="Extra configurations as a JSON object "
        "{name: {setting: value}} (added to the "
        "built-in ones).",
    )
    parser.add_argument(
        "--subsample", type=int, default=None, help=argparse.SUPPRESS
    )  # tests: every n-th digit
    args = parser.parse_args(argv)
    args.configs = dict(CONFIGS)
    if args.config_json:
        extra = json.loads(args.config_json)
        if not isinstance(extra, dict):
            parser.error("--config-json must be a JSON object")
        args.configs.update(extra)
    args.names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = [name for name in args.names if name not in args.configs]
    if unknown:
        parser.error(
            f"unknown configuration(s) {unknown}; choose from "
            f"{list(args.configs)}"
        )
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.minutes is not None and not args.minutes > 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    if args.samples_per_class < 2:
        parser.error("--samples-per-class must be >= 2")
    args.seeds = _numbers(args.seeds, int, "--seeds")
    args.num_steps = _numbers(args.num_steps, int, "--num-steps")
    args.time_shifts = _numbers(args.time_shifts, float, "--time-shifts")
    args.samplers = [s for s in args.samplers.split(",") if s]
    for sampler in args.samplers:
        if sampler not in keras_dsd.samplers.SAMPLERS:
            parser.error(
                f"unknown sampler {sampler!r}; choose from "
                f"{sorted(keras_dsd.samplers.SAMPLERS)}"
            )
    scales = [s for s in args.guidance_scales.split(",") if s]
    args.guidance_scales_or_none = [
        None if s.lower() == "none" else float(s) for s in scales
    ]
    args.guidance_scales = [
        s for s in args.guidance_scales_or_none if s is not None
    ]
    args.guidance_intervals = [
        _interval(text, parser)
        for text in args.guidance_intervals.split(",")
        if text
    ] or [None]
    if args.stop_at:
        args.stop_at = _utc_today_at(args.stop_at)
    return args


def _interval(text, parser):
    """'none' -> None; 'LOW:HIGH' -> (LOW, HIGH), checked as `generate`
    checks it."""
    if text.lower() == "none":
        return None
    try:
        low, high = (float(x) for x in text.split(":"))
        return keras_dsd.samplers.check_guidance_interval((low, high), 1.0)
    except ValueError:
        parser.error(
            "--guidance-intervals takes 'none' or LOW:HIGH with "
            f"0 <= LOW < HIGH <= 1, got {text!r}"
        )


def _utc_today_at(text):
    hours, minutes = (int(x) for x in text.split(":"))
    now = time.gmtime()
    return calendar.timegm(
        (now.tm_year, now.tm_mon, now.tm_mday, hours, minutes, 0)
    )


def main(argv=None):
    args = parse_args(argv)
    return {"train": train, "resample": resample, "report": report}[
        args.command
    ](args)


if __name__ == "__main__":
    sys.exit(main())
