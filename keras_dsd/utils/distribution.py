"""Data-parallel training with the same script on JAX, TensorFlow and PyTorch.

```python
context = keras_dsd.utils.distribution.setup_data_parallel()
with context.scope():
    model = keras_dsd.models.DSDImageGenerator(backbone)
    model.compile()
dataset = folder.as_dataset(
    image_size, context.per_process_batch_size(global_batch_size),
    num_shards=context.data_shards, shard_index=context.process_index,
)
dataset = context.distribute_dataset(dataset)
context.prepare_model(model)
model.fit(dataset, ...)
```

Several processes (nodes, TPU hosts, one process per GPU) start from each
launcher's own settings: `torchrun`'s `WORLD_SIZE`/`RANK`/`LOCAL_RANK`,
Keras' `KERAS_DISTRIBUTION_*` variables for JAX (or `multi_host=True` on a
TPU pod), a `TF_CONFIG` worker cluster for TensorFlow
(`initialize_processes` of each `keras_dsd.backend` module). Each process
reads and decodes only its own shard of every global batch
(`per_process_batch_size` images).

- JAX: `keras.distribution.DataParallel` over every device of every
  process (GPUs, TPU cores, or `--xla_force_host_platform_device_count`
  CPUs); one jitted program runs the global batch, sharded along the batch
  axis, assembled from the processes' shards.
- TensorFlow: `tf.distribute.TPUStrategy` when a TPU is found,
  `MultiWorkerMirroredStrategy` under `TF_CONFIG`,
  `tf.distribute.MirroredStrategy` over several GPUs (or the logical
  devices given), else the default strategy. In one process Keras splits
  each global batch across the replicas.
- PyTorch: under `torchrun`, one process per GPU (NCCL) or CPU (gloo).
  Keras' `fit` has no DistributedDataParallel, so `prepare_model`
  broadcasts the weights from process 0 and makes every `backward()`
  average the gradients across processes (bucketed all-reduces that
  overlap the backward pass, as DistributedDataParallel does, skipped on
  micro-batches that only accumulate; a wrapper DDP module would hide the
  Keras layers from `fit`).

`process_values` and `barrier` coordinate the processes outside `fit`
(the chief writes, the others wait; all agree on a checkpoint). The
per-backend code lives in `keras_dsd.backend`; this module only holds
what the three share.
"""

import contextlib
import dataclasses

import keras

from keras_dsd import backend


@dataclasses.dataclass
class DataParallelContext:
    """What `setup_data_parallel` set up.

    Attributes:
        backend: string. The Keras backend.
        num_replicas: int. Devices (or processes) that share a global batch.
        num_processes: int. Python processes taking part (each reads its own
            data shard).
        process_index: int. This process's index.
        strategy: the `tf.distribute.Strategy` on TensorFlow, else `None`.
        description: string. One line for logs.
    """

    backend: str
    num_replicas: int = 1
    num_processes: int = 1
    process_index: int = 0
    strategy: object = None
    description: str = "1 device"

    @property
    def is_chief(self):
        """Whether this process writes checkpoints, logs and images."""
        return self.process_index == 0

    def scope(self):
        """Build and compile the model inside this scope."""
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()

    @property
    def data_shards(self):
        """How many slices of the data stream the processes read: one per
        process, each read (and decoded) by its process only. A single
        process passes the global stream to `fit`, which splits it across
        its devices."""
        return self.num_processes

    def distribute_dataset(self, dataset):
        """This process's dataset (its shard, `per_process_batch_size`
        images per batch) as `fit`'s input (TensorFlow multi-worker: a
        `tf.distribute` dataset of per-replica batches)."""
        return backend.distribute_dataset(dataset, self.num_replicas)

    def process_values(self, value):
        """`value` (a number) of every process, in process order; a
        collective that every process must call (`keras_dsd.backend`)."""
        return backend.process_values(value)

    def barrier(self):
        """Returns once every process has reached it."""
        self.process_values(0)

    def per_process_batch_size(self, global_batch_size):
        """The batch size of this process's dataset; checks that the
        devices divide the global batch."""
        if global_batch_size % self.num_replicas:
            raise ValueError(
                f"The global batch size {global_batch_size} is not divisible "
                f"by the {self.num_replicas} devices ({self.description}); "
                f"use a multiple of {self.num_replicas}."
            )
        return global_batch_size // self.data_shards

    def prepare_model(self, model, bucket_cap_mb=25.0):
        """Makes multi-process PyTorch training data-parallel (see the
        module docstring); a no-op elsewhere. Call after `compile`.

        Args:
            model: the compiled `keras.Model`.
            bucket_cap_mb: float. PyTorch only: gradients are all-reduced
                in buckets of about this many MiB, overlapped with the
                backward pass (DistributedDataParallel's default, 25).
        """
        if self.backend == "tensorflow" and self.num_processes > 1:
            from keras_dsd.backend import tensorflow_backend

            tensorflow_backend.prepare_multi_worker_model(model)
        if self.backend != "torch" or self.num_processes == 1:
            return model
        from keras_dsd.backend import torch_backend

        torch_backend.broadcast_variables(model.weights)
        if getattr(model, "_gradient_hooks", None) is None:
            model._gradient_hooks = (
                torch_backend.average_gradients_across_processes(
                    model.trainable_variables,
                    bucket_cap_mb,
                    optimizer=model.optimizer,
                )
            )
        return model


def setup_data_parallel(devices=None, tpu=None, multi_host=False):
    """Sets up data-parallel training for the current backend.

    Args:
        devices: optional list of device names (TensorFlow, e.g.
            `["/cpu:0", "/cpu:1"]`) or of JAX devices. Defaults to every
            accelerator found.
        tpu: optional TPU name or address for TensorFlow's
            `TPUClusterResolver`; `"local"` on a TPU VM. Defaults to using a
            TPU only when the `TPU_NAME` environment variable is set.
        multi_host: bool. JAX: call `keras.distribution.initialize()` even
            without `KERAS_DISTRIBUTION_*` variables (a TPU pod, where JAX
            finds the hosts itself); with them it is called anyway.
            Defaults to `False`.

    Returns:
        A `DataParallelContext`.
    """
    fields = backend.setup_data_parallel(devices, tpu, multi_host)
    return DataParallelContext(backend=keras.backend.backend(), **fields)
