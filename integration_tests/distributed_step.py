"""Two training steps on 2 devices or 2 processes vs. on 1 device.

Run by `distribution_test.py`, one backend per process: 2 devices in one
process,

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        KERAS_BACKEND=jax python integration_tests/distributed_step.py OUT
    KERAS_BACKEND=tensorflow python integration_tests/distributed_step.py OUT

or 2 processes, each started by its backend's launcher (torch:
`python -m torch.distributed.run --standalone --nproc_per_node 2
integration_tests/distributed_step.py OUT`; JAX: `KERAS_DISTRIBUTION_*`;
TensorFlow: `TF_CONFIG`, see `distribution_test.launch`).

Both runs start from the same weights and see the same global batches (4
images per step); the distributed run goes through
`keras_dsd.utils.distribution` exactly as `examples/train_imagenet.py` does
(JAX `DataParallel`, TF `MirroredStrategy` over 2 logical CPUs or
`MultiWorkerMirroredStrategy` over 2 processes, torch gloo with 2
processes), each process fed its shard. The times and noise are fixed
functions of each example (`test_utils.deterministic_generator`), so that
the two runs are comparable at all; SGD, because Adam's normalisation would
hide a wrong gradient scale. Writes a JSON summary to OUT.
"""

import json
import os
import sys

BACKEND = os.environ.get("KERAS_BACKEND", "")
if BACKEND == "tensorflow" and not os.environ.get("TF_CONFIG"):
    import tensorflow as tf

    # Before Keras touches TensorFlow: split the CPU in two devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_dsd.testing import test_utils  # noqa: E402
from keras_dsd.utils import distribution  # noqa: E402

GLOBAL_BATCH = 4
STEPS = 2
# `DSD_TEST_GRAD_ACCUM=2`: both runs accumulate the gradients of 2 batches
# per update (PyTorch processes then all-reduce only on the update).
GRAD_ACCUM = int(os.environ.get("DSD_TEST_GRAD_ACCUM", "1"))


def make_model():
    backbone = test_utils.randomize_weights(
        test_utils.tiny_backbone(), seed=1, stddev=0.2
    )
    model = test_utils.deterministic_generator(
        backbone, teacher_decay=0.5, ema_decay=0.9, seed=0
    )
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=0.02,
            gradient_accumulation_steps=GRAD_ACCUM if GRAD_ACCUM > 1 else None,
        )
    )
    return model


LATENT_KEYS = ("latent_effective_rank", "latent_std")


def train(model, dataset):
    history = model.fit(dataset, epochs=1, shuffle=False, verbose=0)
    latent = {key: float(history.history[key][0]) for key in LATENT_KEYS}
    return float(history.history["loss"][0]), latent


def batches(images, labels, batch_size):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(
        batch_size
    )


def weights(model):
    return [
        np.asarray(keras.ops.convert_to_numpy(w))
        for network in (
            model.backbone,
            model.teacher_backbone,
            model.ema_backbone,
        )
        for w in network.weights
    ]


def main(output_path):
    images = test_utils.random_images(GLOBAL_BATCH * STEPS)
    labels = test_utils.random_labels(GLOBAL_BATCH * STEPS)

    multi_process = any(
        os.environ.get(name)
        for name in ("TF_CONFIG", "KERAS_DISTRIBUTION_NUM_PROCESSES")
    )
    devices = (
        ["/cpu:0", "/cpu:1"]
        if BACKEND == "tensorflow" and not multi_process
        else None
    )
    # First: the multi-process runtimes start before any other computation.
    context = distribution.setup_data_parallel(devices=devices)

    # The 1-device run, on this process alone (JAX: without the
    # distribution over all devices).
    distributed = None
    if BACKEND == "jax":
        distributed = keras.distribution.distribution()
    if distributed is not None:
        keras.distribution.set_distribution(None)
    single = make_model()
    initial = weights(single)
    single_loss, single_latent = train(
        single, batches(images, labels, GLOBAL_BATCH)
    )
    if distributed is not None:
        keras.distribution.set_distribution(distributed)

    with context.scope():
        multi = make_model()
    batch_size = context.per_process_batch_size(GLOBAL_BATCH)
    # Each process reads its shard: element i of a global batch goes to
    # process i % num_processes (`ImageFolder.as_dataset`'s convention).
    shard = np.arange(len(images)).reshape(STEPS, GLOBAL_BATCH)
    shard = shard[:, context.process_index :: context.data_shards].ravel()
    dataset = context.distribute_dataset(
        batches(images[shard], labels[shard], batch_size)
    )
    # A 16 KiB bucket cap splits the tiny model's gradients into several
    # buckets, so that the overlapped all-reduce's ordering is exercised.
    context.prepare_model(multi, bucket_cap_mb=1 / 64)
    multi_loss, multi_latent = train(multi, dataset)

    diff = max(
        np.abs(a - b).max() for a, b in zip(weights(multi), weights(single))
    )
    moved = max(np.abs(a - b).max() for a, b in zip(weights(single), initial))
    # The processes must hold the very same weights.
    mine = np.concatenate([w.ravel() for w in weights(multi)])
    spread = context.process_values(float(np.abs(mine).sum()))
    summary = {
        "backend": BACKEND,
        "description": context.description,
        "num_replicas": context.num_replicas,
        "num_processes": context.num_processes,
        "single_loss": single_loss,
        # Logged on the global batch whatever the process count.
        "multi_loss": multi_loss,
        "max_weight_difference": float(diff),
        "max_weight_change": float(moved),
        "weight_sums_of_processes": spread,
        "single_latent": single_latent,
        "multi_latent": multi_latent,
    }
    hooks = getattr(multi, "_gradient_hooks", None)
    if hooks is not None:
        summary["buckets"] = len(hooks.buckets)
        summary["all_reduces"] = hooks.all_reduces
    if context.is_chief:
        with open(output_path, "w") as f:
            json.dump(summary, f, indent=2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1])
