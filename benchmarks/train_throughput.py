"""Training and sampling throughput of a DSD preset on the current backend.

Times `train_on_batch` steps after a warm-up (which absorbs compilation)
and one `generate` call, and prints images/s, step time and peak memory
with the machine it ran on. Data are random uint8 images: this measures
the model step, not an input pipeline.

It also prints the analytic FLOPs per image (`keras_dsd.models.dsd_flops`,
matmuls only), the achieved FLOP/s, and the utilisation against a peak:
on CPU, the same backend's dense matmul rate measured in this run; on a
GPU, the device's published dense peak for the compute dtype (a table in
`benchmarks/machine.py`). For an unknown GPU it says "unknown peak".

    for b in jax tensorflow torch; do
      KERAS_BACKEND=$b python benchmarks/train_throughput.py --preset dsd_tiny
    done

`--fit` times `fit` epochs instead of `train_on_batch` calls: what
`model.fit(arrays)` costs per step, including Keras' loop around the
compiled step (on JAX, dispatch ahead of the running step).

`--per-step N` then runs N more steps, waiting for each, and prints each
step's time, minor page faults and system CPU time (the process's own, from
`getrusage`: where a step's time goes outside the computation) and its
loss (the same batch every step, so the values of two code versions can be
compared).
"""

import argparse
import resource
import time

import keras
import machine  # benchmarks/machine.py
import numpy as np

import keras_dsd
from keras_dsd.models.dsd import dsd_flops


def machine_description():
    if keras.backend.backend() == "torch":  # no keras.distribution on torch
        import torch

        devices = (
            f"cuda ({torch.cuda.get_device_name()})"
            if torch.cuda.is_available()
            else "cpu"
        )
    elif keras.backend.backend() == "jax":
        import jax

        devices = ", ".join(
            sorted({f"{d.platform} ({d.device_kind})" for d in jax.devices()})
        )
    else:
        devices = ", ".join(
            sorted({d.split(":")[0] for d in keras.distribution.list_devices()})
        )
    return f"{machine.describe_machine()}; devices: {devices}"


def versions():
    import importlib

    backend = keras.backend.backend()
    module = importlib.import_module(backend)
    return (
        f"keras {keras.__version__}, {backend} {module.__version__}, "
        f"keras_dsd {keras_dsd.__version__}, numpy {np.__version__}"
    )


def print_conditions(load_before):
    """Prints the machine, the load average before the run and the
    versions: the conditions every benchmark number is stated with."""
    print(f"machine: {machine_description()}")
    print(f"load average before the run: {load_before}")
    print(f"versions: {versions()}")


def accelerator_name():
    """The GPU's name, or `None` when the backend runs on CPU."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return device.device_kind
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return details.get("device_name", "unknown GPU")
    return None


def peak_rate(dtype):
    """`(FLOP/s, description)` to measure utilisation against, or
    `(None, why)`."""
    name = accelerator_name()
    backend = keras.backend.backend()
    if name is None:
        rate = machine.matmul_rate(backend, dtype)
        return rate, (
            f"{backend}'s own {dtype} 2048x2048 matmul in this run: "
            f"{rate / 1e9:.0f} GFLOP/s"
        )
    rate = machine.published_peak(name, dtype)
    if rate is None:
        return None, f"unknown peak for {name!r}"
    return rate, (
        f"published dense {dtype} peak of {name}: {rate / 1e12:.0f} TFLOP/s"
    )


def report_flops(label, flops_per_image, images_per_second, peak):
    rate, description = peak
    achieved = flops_per_image * images_per_second
    line = (
        f"{label}: {flops_per_image / 1e9:.3f} GFLOP/image, achieved "
        f"{achieved / 1e9:.1f} GFLOP/s, "
    )
    if rate is None:
        line += f"utilisation: {description}"
    else:
        line += f"utilisation {100 * achieved / rate:.1f} % of {description}"
    print(line)


def accelerator_peak_memory_mib():
    """Peak accelerator memory of this process in MiB, or `None` on CPU."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            stats = device.memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return stats["peak_bytes_in_use"] / 2**20
    else:
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            info = tf.config.experimental.get_memory_info(gpus[0].name)
            return info["peak"] / 2**20
    return None


def model_and_batch(preset, batch_size, jit_compile="auto"):
    """A compiled `DSDImageGenerator` of `preset` and one random batch of
    uint8 images and labels for it."""
    backbone = keras_dsd.models.DSDBackbone.from_preset(preset)
    model = keras_dsd.models.DSDImageGenerator(backbone=backbone, seed=0)
    model.compile(jit_compile=jit_compile)
    size = backbone.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, size, size, 3), "uint8")
    labels = rng.integers(0, backbone.num_classes, (batch_size,))
    return model, images, labels


def fit_seconds(model, images, labels, steps):
    """Seconds per step of one `fit` epoch of `steps` steps over `images`
    and `labels` repeated, from the epoch's first step starting to the
    end of its last (the data adapter's set-up before is not counted)."""
    times = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                times.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            float(logs["loss"])  # waits for asynchronous backends
            times.append(time.perf_counter())

    model.fit(
        np.concatenate([images] * steps),
        np.concatenate([labels] * steps),
        batch_size=len(images),
        shuffle=False,
        verbose=0,
        callbacks=[Clock()],
    )
    return (times[1] - times[0]) / steps


def preset_parser(doc, batch_size):
    """An argument parser described by `doc`'s first paragraph, with
    `--preset` and `--batch-size`."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--preset", default="dsd_tiny", choices=sorted(keras_dsd.models.presets)
    )
    parser.add_argument("--batch-size", type=int, default=batch_size)
    return parser


def main():
    parser = preset_parser(__doc__, batch_size=64)
    parser.add_argument(
        "--steps", type=int, default=20, help="Timed training steps."
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="Untimed steps (compilation)."
    )
    parser.add_argument(
        "--sample-steps",
        type=int,
        default=16,
        help="Heun steps for the sampling timing; 0 skips.",
    )
    parser.add_argument(
        "--sampler", default="heun", choices=sorted(keras_dsd.samplers.SAMPLERS)
    )
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument(
        "--per-step",
        type=int,
        default=0,
        help="Then time this many steps one by one, with page faults.",
    )
    parser.add_argument(
        "--fit",
        action="store_true",
        help="Time `fit` epochs over the batch repeated (warm-up, then "
        "timed) instead of `train_on_batch` calls.",
    )
    parser.add_argument(
        "--jit-compile",
        default="auto",
        choices=["auto", "true", "false"],
        help="`compile(jit_compile=...)`; on torch, `true` is torch.compile.",
    )
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be at least 1; got {args.steps}.")
    if args.warmup < (1 if args.fit else 0):
        parser.error(
            f"--warmup must be at least {1 if args.fit else 0}"
            f"{' with --fit' if args.fit else ''}; got {args.warmup}."
        )
    load_before = machine.load_average()
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")

    jit_compile = {"auto": "auto", "true": True, "false": False}
    model, images, labels = model_and_batch(
        args.preset, args.batch_size, jit_compile[args.jit_compile]
    )
    backbone = model.backbone

    if args.fit:
        compile_seconds = args.warmup * fit_seconds(
            model, images, labels, args.warmup
        )
        step_seconds = fit_seconds(model, images, labels, args.steps)
    else:
        start = time.perf_counter()
        for _ in range(args.warmup):
            model.train_on_batch(images, labels)
        compile_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.steps):
            logs = model.train_on_batch(images, labels, return_dict=True)
        float(logs["loss"])  # wait for asynchronous backends
        step_seconds = (time.perf_counter() - start) / args.steps

    compute_dtype = keras.mixed_precision.global_policy().compute_dtype
    peak = peak_rate(compute_dtype)
    print_conditions(load_before)
    print(
        f"backend={keras.backend.backend()} preset={args.preset} "
        f"params={backbone.count_params():,} batch={args.batch_size} "
        f"policy={keras.mixed_precision.global_policy().name} "
        f"jit_compile={model.jit_compile}"
    )
    print(
        f"train: {1.0 / step_seconds:.3f} steps/s, "
        f"{args.batch_size / step_seconds:.1f} images/s, "
        f"{1000 * step_seconds:.1f} ms/step "
        f"(warm-up {args.warmup} steps incl. compile: {compile_seconds:.1f} s)"
        + (" in fit" if args.fit else "")
    )
    for step in range(args.per_step):
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        logs = model.train_on_batch(images, labels, return_dict=True)
        loss = float(logs["loss"])  # waits for the step
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(
            f"step {step}: {1000 * seconds:.0f} ms, "
            f"{after.ru_minflt - before.ru_minflt} minor page faults, "
            f"{after.ru_stime - before.ru_stime:.2f} s system CPU, "
            f"loss {loss:.9g}"
        )
    uses_teacher = model.teacher_backbone is not None
    report_flops(
        "train FLOPs",
        dsd_flops.training_step_flops(backbone, teacher=uses_teacher),
        args.batch_size / step_seconds,
        peak,
    )
    if args.sample_steps:
        class_labels = labels % backbone.num_classes
        sample_kwargs = {
            "num_steps": args.sample_steps,
            "sampler": args.sampler,
        }
        model.generate(class_labels, seed=0, **sample_kwargs)
        start = time.perf_counter()
        model.generate(class_labels, seed=1, **sample_kwargs)
        seconds = time.perf_counter() - start
        nfe = keras_dsd.samplers.num_function_evaluations(
            args.sampler, args.sample_steps
        )
        print(
            f"sample: {args.batch_size / seconds:.1f} images/s "
            f"({args.sampler}, {args.sample_steps} steps = {nfe} NFE, batch "
            f"{args.batch_size})"
        )
        report_flops(
            "sample FLOPs",
            dsd_flops.sampling_flops(backbone, nfe),
            args.batch_size / seconds,
            peak,
        )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak host memory (max RSS): {peak_mib:.0f} MiB")
    device_mib = accelerator_peak_memory_mib()
    if device_mib is not None:
        print(f"peak accelerator memory: {device_mib:.0f} MiB")


if __name__ == "__main__":
    main()
