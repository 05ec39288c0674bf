"""Two training steps on 2 simulated devices vs. on 1 device.

Run by `distribution_test.py`, one backend per process:

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        KERAS_BACKEND=jax python integration_tests/distributed_step.py OUT
    KERAS_BACKEND=tensorflow python integration_tests/distributed_step.py OUT
    KERAS_BACKEND=torch python -m torch.distributed.run --standalone \\
        --nproc_per_node 2 integration_tests/distributed_step.py OUT

Both runs start from the same weights and see the same global batches (4
images per step); the distributed run goes through
`keras_dsd.utils.distribution` exactly as `examples/train_imagenet.py` does
(JAX `DataParallel`, TF `MirroredStrategy` over 2 logical CPUs, torch
gloo with 2 processes, each fed its shard). The times and noise are fixed
functions of each example (`test_utils.deterministic_generator`), so that
the two runs are comparable at all; SGD, because Adam's normalisation would
hide a wrong gradient scale. Writes a JSON summary to OUT.
"""

import json
import os
import sys

BACKEND = os.environ.get("KERAS_BACKEND", "")
if BACKEND == "tensorflow":
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


def make_model():
    backbone = test_utils.randomize_weights(
        test_utils.tiny_backbone(), seed=1, stddev=0.2
    )
    model = test_utils.deterministic_generator(
        backbone, teacher_decay=0.5, ema_decay=0.9, seed=0
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.02))
    return model


LATENT_KEYS = ("latent_effective_rank", "latent_std")


def train(model, images, labels, batch_size):
    history = model.fit(
        images,
        labels,
        batch_size=batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    latent = {key: float(history.history[key][0]) for key in LATENT_KEYS}
    return float(history.history["loss"][0]), latent


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

    single = make_model()
    initial = weights(single)
    single_loss, single_latent = train(single, images, labels, GLOBAL_BATCH)

    devices = ["/cpu:0", "/cpu:1"] if BACKEND == "tensorflow" else None
    context = distribution.setup_data_parallel(devices=devices)
    with context.scope():
        multi = make_model()
    # A 16 KiB bucket cap splits the tiny model's gradients into several
    # buckets, so that the overlapped all-reduce's ordering is exercised.
    context.prepare_model(multi, bucket_cap_mb=1 / 64)
    batch_size = context.per_process_batch_size(GLOBAL_BATCH)
    # Each process reads its shard: element i of a global batch goes to
    # process i % num_processes (`ImageFolder.as_dataset`'s convention).
    shard = np.arange(len(images)).reshape(STEPS, GLOBAL_BATCH)
    shard = shard[:, context.process_index :: context.data_shards].ravel()
    multi_loss, multi_latent = train(
        multi, images[shard], labels[shard], batch_size
    )

    diff = max(
        np.abs(a - b).max() for a, b in zip(weights(multi), weights(single))
    )
    moved = max(np.abs(a - b).max() for a, b in zip(weights(single), initial))
    summary = {
        "backend": BACKEND,
        "description": context.description,
        "num_replicas": context.num_replicas,
        "single_loss": single_loss,
        "multi_loss": multi_loss,
        "max_weight_difference": float(diff),
        "max_weight_change": float(moved),
        # Logged on the global batch whatever the device count.
        "single_latent": single_latent,
        "multi_latent": multi_latent,
    }
    if BACKEND == "torch" and context.num_processes > 1:
        import torch
        import torch.distributed as dist

        # Each process logs its own shard's loss; the global loss is their
        # mean. The processes must also hold the very same weights.
        loss = torch.tensor([multi_loss])
        dist.all_reduce(loss)
        summary["multi_loss"] = float(loss[0]) / context.num_processes
        mine = torch.tensor(np.concatenate([w.ravel() for w in weights(multi)]))
        first = mine.clone()
        dist.broadcast(first, src=0)
        summary["max_difference_between_processes"] = float(
            (mine - first).abs().max()
        )
        gap = torch.tensor([summary["max_difference_between_processes"]])
        dist.all_reduce(gap, op=dist.ReduceOp.MAX)
        summary["max_difference_between_processes"] = float(gap[0])
        dist.destroy_process_group()
    if context.is_chief:
        with open(output_path, "w") as f:
            json.dump(summary, f, indent=2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1])
