"""Train DSD on ImageNet (or any class-per-folder image set), on any backend.

The same script runs on one GPU, several GPUs, TPUs or a CPU:

    KERAS_BACKEND=jax python examples/train_imagenet.py \\
        --preset dsd_s --data-dir /data/imagenet --mixed-precision bf16
    KERAS_BACKEND=tensorflow python examples/train_imagenet.py ...
    KERAS_BACKEND=torch torchrun --nproc_per_node 8 \\
        examples/train_imagenet.py ...
    python examples/train_imagenet.py --smoke   # a few steps on made-up data

JAX uses every device through `keras.distribution.DataParallel`;
TensorFlow `MirroredStrategy` over its GPUs (`TPUStrategy` with `--tpu`);
PyTorch one process per GPU under `torchrun`. Several processes (nodes,
TPU hosts) start from each launcher's own settings, with no extra flag:
`torchrun`'s `WORLD_SIZE`/`RANK`, JAX's `KERAS_DISTRIBUTION_*` variables
(`--multi-host` on a TPU pod), TensorFlow's `TF_CONFIG`; each process
reads and decodes only its shard of the data, and process 0 writes the
files (`--output-dir` must be one folder that every process sees).
The defaults are the library's `imagenet` recipe (ImageNet 256x256,
class-conditional, 50 epochs, AdamW 1e-4, EMA teacher 0.999, sampling EMA
0.9999, logit-normal times). Everything lands in `--output-dir`:

- `run_config.json`: the resolved recipe (a restart must match it);
- `checkpoints/`: the resumable training state. Run the same command again
  after a crash or preemption and training continues from the last
  checkpoint, with the same data order;
- `history.csv`, `tensorboard/`: losses and latent metrics;
- `samples/`: PNG grids of fixed classes and noise, from the EMA weights;
- `preset/`: the final model for `DSDImageGenerator.from_preset`.
"""

import argparse
import hashlib
import importlib.util
import json
import math
import os
import sys
import time

import keras
import numpy as np

import keras_dsd
from keras_dsd.callbacks import TrainingCheckpoint
from keras_dsd.models.dsd.dsd_image_generator import TIME_DISTRIBUTIONS
from keras_dsd.models.dsd.dsd_presets import backbone_presets
from keras_dsd.models.dsd.objectives import OBJECTIVES
from keras_dsd.utils.file_utils import write_json

# Every model and optimiser default below comes from the library's
# `imagenet` recipe; the flags only let a run change them.
RECIPE = keras_dsd.recipes.get("imagenet")
# The recipe's DSDImageGenerator settings that have a flag here.
FLAG_SETTINGS = (
    "objective",
    "teacher_decay",
    "ema_decay",
    "time_distribution",
    "t_min",
    "label_dropout",
)
# DiT's sample classes: macaw, husky, golden retriever, panda, otter, ...
SAMPLE_CLASSES = (88, 207, 279, 360, 387, 388, 417, 974, 979, 980, 33, 812)
# Recipe settings a restart may change without starting a new run.
RESUMABLE_CHANGES = (
    "epochs",
    "steps",
    "updates",
    "sample_every",
    "max_minutes",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        default=None,
        help="ImageNet folder (holding train/<wnid>/*.JPEG, or "
        "the train folder itself), any class-per-folder "
        "tree with --source folder, or the tfds data dir "
        "with --source tfds.",
    )
    data.add_argument(
        "--source",
        default="imagenet-folder",
        choices=["imagenet-folder", "folder", "tfds"],
        help="imagenet-folder: 1000 wnid folders, standard "
        "label order; folder: any class-per-folder tree; "
        "tfds: imagenet2012 built from the official tars "
        "in --manual-dir.",
    )
    data.add_argument(
        "--manual-dir",
        default=None,
        help="With --source tfds: folder holding "
        "ILSVRC2012_img_train.tar and ILSVRC2012_img_val"
        ".tar.",
    )
    data.add_argument(
        "--image-size",
        type=int,
        default=256,
        help="Training resolution (ADM center crop); the "
        "preset's patch size must divide it.",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--preset",
        default=RECIPE.preset,
        choices=sorted(backbone_presets),
        help="Backbone size.",
    )
    model.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="Classes of a new model; defaults to the "
        "preset's. Must equal the data's class count.",
    )
    model.add_argument(
        "--objective",
        default=RECIPE.generator["objective"],
        choices=list(OBJECTIVES),
        help="Training objective (decoupled and naive are "
        "the paper's ablations).",
    )
    model.add_argument(
        "--teacher-decay",
        type=float,
        default=RECIPE.generator["teacher_decay"],
        help="EMA decay of the teacher.",
    )
    model.add_argument(
        "--ema-decay",
        type=float,
        default=RECIPE.generator["ema_decay"],
        help="EMA decay of the sampling weights.",
    )
    model.add_argument(
        "--time-distribution",
        default=RECIPE.generator["time_distribution"],
        choices=TIME_DISTRIBUTIONS,
    )
    model.add_argument(
        "--t-min",
        type=float,
        default=RECIPE.generator["t_min"],
        help="Clamp of 1 - t in the loss weight.",
    )
    model.add_argument(
        "--label-dropout",
        type=float,
        default=RECIPE.generator["label_dropout"],
        help="Null-class probability, for guidance (the "
        "paper's numbers use none).",
    )
    train = parser.add_argument_group("optimisation")
    train.add_argument(
        "--global-batch-size",
        type=int,
        default=RECIPE.batch_size,
        help="Images per optimizer update, over all devices "
        "and accumulation steps.",
    )
    train.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        help="Gradient accumulation steps: each update "
        "averages this many micro-batches of "
        "global-batch-size / grad-accum images.",
    )
    train.add_argument(
        "--epochs",
        type=float,
        default=50,
        help="Passes over the data (ignored with --steps).",
    )
    train.add_argument(
        "--steps",
        type=int,
        default=None,
        help="Optimizer updates; overrides --epochs.",
    )
    train.add_argument(
        "--learning-rate", type=float, default=RECIPE.learning_rate
    )
    train.add_argument(
        "--warmup-steps",
        type=int,
        default=RECIPE.warmup_steps,
        help="Linear learning-rate warm-up (updates).",
    )
    train.add_argument(
        "--weight-decay", type=float, default=RECIPE.weight_decay
    )
    train.add_argument(
        "--clipnorm",
        type=float,
        default=RECIPE.clipnorm,
        help="Gradient-norm clipping; off by default.",
    )
    train.add_argument(
        "--mixed-precision",
        default="none",
        choices=["none", "bf16"],
        help="bf16: bfloat16 compute, float32 weights, "
        "teacher, EMA and sensitive layers.",
    )
    train.add_argument("--seed", type=int, default=0)
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", default="outputs/train_imagenet")
    run.add_argument(
        "--steps-per-loop",
        type=int,
        default=1000,
        help="Micro-batches between checkpoints and log "
        "lines (one Keras epoch).",
    )
    run.add_argument(
        "--sample-every",
        type=int,
        default=10,
        help="Loops between sample grids.",
    )
    run.add_argument(
        "--sample-steps",
        type=int,
        default=RECIPE.sampling["num_steps"],
        help="Heun steps of the sample grids.",
    )
    run.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="Stop cleanly after this long (checkpoint "
        "written), e.g. before a preemption.",
    )
    run.add_argument(
        "--tpu",
        default=None,
        help="TensorFlow: TPU name or 'local' on a TPU VM.",
    )
    run.add_argument(
        "--multi-host",
        action="store_true",
        help="JAX: start the multi-process runtime even without "
        "KERAS_DISTRIBUTION_* variables (a TPU pod, where JAX finds the "
        "hosts itself).",
    )
    run.add_argument(
        "--smoke",
        action="store_true",
        help="A few steps of dsd_tiny on a generated image "
        "folder: checks the whole pipeline.",
    )
    args = parser.parse_args(argv)
    for name in (
        "image_size",
        "global_batch_size",
        "grad_accum",
        "steps_per_loop",
        "sample_every",
        "sample_steps",
    ):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be >= 1, got "
                f"{getattr(args, name)}"
            )
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.epochs <= 0:
        parser.error(f"--epochs must be > 0, got {args.epochs}")
    if args.global_batch_size % args.grad_accum:
        parser.error(
            f"--global-batch-size {args.global_batch_size} is not divisible "
            f"by --grad-accum {args.grad_accum}"
        )
    if args.smoke:
        args.preset, args.image_size, args.num_classes = "dsd_tiny", 32, 3
        args.global_batch_size = 4 * args.grad_accum
        args.steps = args.steps or 4
        args.steps_per_loop, args.sample_every, args.sample_steps = 2, 1, 2
        args.source = "folder"
        args.data_dir = os.path.join(args.output_dir, "smoke_data")
    elif args.data_dir is None:
        parser.error("--data-dir is required (or --smoke)")
    return args


def make_smoke_folder(directory, num_classes=3, per_class=8, seed=0):
    """A tiny class-per-folder tree of coloured-shape JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(num_classes):
        folder = os.path.join(directory, f"class_{label}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            path = os.path.join(folder, f"{i}.jpg")
            if os.path.exists(path):
                continue
            image = np.full((40, 48, 3), 30 + 80 * label, "uint8")
            top, left = rng.integers(0, 20, 2)
            image[top : top + 16, left : left + 20] = rng.integers(0, 256, 3)
            Image.fromarray(image).save(path, quality=90)


def load_data(args, context, micro_batch, start_step):
    """The training stream of this process, and the data's size."""
    kwargs = {
        "shuffle": True,
        "seed": args.seed,
        "random_flip": True,
        "start_step": start_step,
        # Each process reads (and decodes) only its own shard.
        "num_shards": context.data_shards,
        "shard_index": context.process_index,
    }
    per_process = context.per_process_batch_size(micro_batch)
    if args.source == "tfds":
        if args.manual_dir is None:
            raise ValueError(
                "--source tfds needs --manual-dir (the folder "
                "with the ILSVRC2012 tar files)."
            )
        dataset = keras_dsd.datasets.imagenet_tfds(
            args.data_dir,
            args.manual_dir,
            args.image_size,
            per_process,
            split="train",
            **kwargs,
        )
        return (
            context.distribute_dataset(dataset),
            IMAGENET_TRAIN_IMAGES,
            1000,
        )
    if args.source == "imagenet-folder":
        folder = keras_dsd.datasets.imagenet_folder(
            args.data_dir, split="train", num_classes=args.num_classes
        )
    else:
        folder = keras_dsd.datasets.ImageFolder(args.data_dir)
    dataset = folder.as_dataset(args.image_size, per_process, **kwargs)
    return (
        context.distribute_dataset(dataset),
        folder.num_images,
        folder.num_classes,
    )


IMAGENET_TRAIN_IMAGES = 1_281_167


def build_model(args, num_classes):
    backbone = keras_dsd.models.DSDBackbone.from_preset(
        args.preset,
        image_size=args.image_size,
        num_classes=num_classes,
        dtype="mixed_bfloat16" if args.mixed_precision == "bf16" else None,
    )
    recipe = RECIPE.replace(
        preset=args.preset,
        generator={name: getattr(args, name) for name in FLAG_SETTINGS},
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        clipnorm=args.clipnorm,
    )
    return recipe.build_model(
        backbone,
        gradient_accumulation_steps=(
            args.grad_accum if args.grad_accum > 1 else None
        ),
        seed=args.seed,
    )


def check_output_dir(args, recipe):
    """Refuses to mix two different runs in one output folder."""
    path = os.path.join(args.output_dir, "run_config.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        changed = sorted(
            key
            for key in set(previous) | set(recipe)
            if key not in RESUMABLE_CHANGES
            and previous.get(key) != recipe.get(key)
        )
        if changed:
            details = ", ".join(
                f"{k}: {previous.get(k)!r} -> {recipe.get(k)!r}"
                for k in changed
            )
            raise ValueError(
                f"--output-dir {args.output_dir} holds a run with a "
                f"different recipe ({details}); use a new --output-dir, or "
                f"the same flags to resume it."
            )
    elif os.path.isdir(args.output_dir):
        others = set(os.listdir(args.output_dir)) - {"smoke_data"}
        if others:
            raise ValueError(
                f"--output-dir {args.output_dir} is not empty and holds no "
                f"run_config.json (found {sorted(others)[:3]}); use a new "
                f"or empty folder."
            )


def agreed_state(context, checkpoint_dir):
    """The checkpoint every process resumes from (`None`: a new run).

    Each process reads the shared `checkpoints/` folder; all must find the
    same step, or the run stops before training with one error (the
    output directory is not shared, or the chief was writing).
    """
    state = TrainingCheckpoint.read_state(checkpoint_dir)
    mine = -1 if state is None else state["batches"]
    steps = context.process_values(mine)
    if len(set(steps)) > 1:
        found = ", ".join(
            f"process {i}: {'none' if s < 0 else int(s)}"
            for i, s in enumerate(steps)
        )
        raise ValueError(
            f"The processes found different checkpoints in {checkpoint_dir} "
            f"(step {found}): --output-dir must be one folder that every "
            f"process sees (a shared filesystem)."
        )
    return state


# Flags that may differ between the processes of one run: each host may
# read its own copy of the data, and names its own TPU.
PER_PROCESS_FLAGS = ("data_dir", "tpu")


def _digest(value):
    """A number (exact in float64) that differs for different values."""
    text = json.dumps(value, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big")


def check_same_flags(context, args):
    """Every process must run the same command (but `PER_PROCESS_FLAGS`):
    else one `ValueError` naming the flags that differ, on every process,
    before anything is trained."""
    flags = {
        key: value
        for key, value in sorted(vars(args).items())
        if key not in PER_PROCESS_FLAGS
    }
    if len(set(context.process_values(_digest(flags)))) == 1:
        return
    differ = [
        f"--{key.replace('_', '-')} (this process, {context.process_index}: "
        f"{value!r})"
        for key, value in flags.items()
        if len(set(context.process_values(_digest(value)))) > 1
    ]
    raise ValueError(
        f"The processes were started with different flags: "
        f"{', '.join(differ)}. Launch every process with the same command."
    )


def main(argv=None):
    args = parse_args(argv)
    try:
        return train(args)
    except ValueError as error:
        if getattr(args, "training_started", False):
            raise  # a failure inside training keeps its traceback
        # Bad flags or data: one line, before anything was trained.
        print(f"train_imagenet.py: error: {error}", file=sys.stderr)
        return 2


def train(args):
    keras.utils.set_random_seed(args.seed)
    context = keras_dsd.utils.distribution.setup_data_parallel(
        tpu=args.tpu, multi_host=args.multi_host
    )
    check_same_flags(context, args)
    preset = backbone_presets[args.preset]["config"]
    if args.image_size % preset["patch_size"]:
        raise ValueError(
            f"--image-size {args.image_size} is not divisible by the patch "
            f"size {preset['patch_size']} of {args.preset}."
        )
    micro_batch = args.global_batch_size // args.grad_accum
    if micro_batch % context.num_replicas:
        raise ValueError(
            f"--global-batch-size {args.global_batch_size} / --grad-accum "
            f"{args.grad_accum} = {micro_batch} images per step is not "
            f"divisible by the {context.num_replicas} devices "
            f"({context.description})."
        )
    # Where a previous run stopped: its data stream resumes at that step.
    checkpoint_dir = os.path.join(args.output_dir, "checkpoints")
    state = agreed_state(context, checkpoint_dir)
    done_loops = state["epoch"] if state else 0
    start_step = state["batches"] if state else 0
    if args.smoke and context.is_chief:
        make_smoke_folder(args.data_dir)
    # The chief wrote the smoke data: the others read it after this.
    context.barrier()
    dataset, num_images, data_classes = load_data(
        args, context, micro_batch, start_step
    )
    num_classes = args.num_classes or preset["num_classes"]
    if data_classes != num_classes:
        raise ValueError(
            f"The data has {data_classes} classes but the model "
            f"{num_classes} ({args.preset}'s default unless --num-classes "
            f"is given); pass --num-classes {data_classes} to train a new "
            f"model on this data."
        )
    updates = args.steps or math.ceil(
        args.epochs * num_images / args.global_batch_size
    )
    loops = math.ceil(updates * args.grad_accum / args.steps_per_loop)

    recipe = {
        key: value
        for key, value in sorted(vars(args).items())
        if key not in ("output_dir", "smoke", "tpu", "multi_host")
    }
    # A checkpoint's optimizer state loads only into the backend that wrote
    # it, so the backend is part of the recipe.
    recipe.update(
        num_classes=num_classes,
        updates=updates,
        backend=keras.backend.backend(),
    )
    # Every process checks (the folder is shared), so that all fail alike.
    check_output_dir(args, recipe)
    context.barrier()
    if context.is_chief:
        write_json(os.path.join(args.output_dir, "run_config.json"), recipe)
    if not context.is_chief:
        keras.config.disable_interactive_logging()

    with context.scope():
        model = build_model(args, num_classes)
    context.prepare_model(model)

    if context.is_chief:
        print("Recipe: " + ", ".join(f"{k}={v}" for k, v in recipe.items()))
        print(
            f"keras_dsd {keras_dsd.__version__} | backend "
            f"{keras.backend.backend()} | {context.description} | "
            f"{args.preset}: {model.backbone.count_params():,} parameters | "
            f"{num_images:,} images in {data_classes} classes | "
            f"{updates:,} updates of {args.global_batch_size} images = "
            f"{loops} loops of {args.steps_per_loop} steps"
        )
        if state:
            print(
                f"Resuming after loop {done_loops} (step {start_step}) "
                f"from {checkpoint_dir}"
            )

    callbacks = [
        # First, so that the other callbacks see the restored model.
        TrainingCheckpoint(checkpoint_dir, write=context.is_chief),
        keras.callbacks.TerminateOnNaN(),
    ]
    if args.max_minutes:
        callbacks.append(keras_dsd.callbacks.TimeLimit(args.max_minutes))
    classes = [c for c in SAMPLE_CLASSES if c < num_classes]
    classes = classes or list(range(min(num_classes, 12)))
    # Every process samples (the same computation over weights laid out
    # across processes); the chief writes the grid.
    callbacks.append(
        keras_dsd.callbacks.SampleGrid(
            os.path.join(args.output_dir, "samples", "loop_{epoch:05d}.png"),
            class_labels=classes * 2,
            rows=2,
            every_n_epochs=args.sample_every,
            num_steps=args.sample_steps,
            seed=args.seed,
            scale=max(1, 128 // args.image_size),
            write=context.is_chief,
        )
    )
    if context.is_chief:
        callbacks += [
            keras.callbacks.CSVLogger(
                os.path.join(args.output_dir, "history.csv"), append=True
            ),
            # Thresholds relative to the run's first steps, on both the
            # effective rank (at most c - 1) and latent_std.
            keras_dsd.callbacks.LatentCollapseMonitor(),
        ]
        if importlib.util.find_spec("tensorboard"):
            callbacks.append(
                keras.callbacks.TensorBoard(
                    os.path.join(args.output_dir, "tensorboard"),
                    update_freq=min(100, args.steps_per_loop),
                )
            )
        else:
            print("TensorBoard logs off: `pip install tensorboard` for them.")
    start = time.time()
    args.training_started = True
    model.fit(
        dataset,
        epochs=loops,
        steps_per_epoch=args.steps_per_loop,
        initial_epoch=done_loops,
        callbacks=callbacks,
        shuffle=False,  # the stream is shuffled (and resumable) already
        verbose=1 if context.is_chief else 0,
    )
    seconds = time.time() - start
    if context.is_chief:
        with keras_dsd.backend.writing_scope():
            model.save_to_preset(os.path.join(args.output_dir, "preset"))
        final = TrainingCheckpoint.read_state(checkpoint_dir)
        steps = final["batches"] - start_step
        print(
            f"Trained {steps} steps ({steps * micro_batch:,} images) in "
            f"{seconds / 60:.1f} min: "
            f"{steps * micro_batch / max(seconds, 1e-9):.1f} images/s. "
            f"Wrote {os.path.abspath(args.output_dir)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
