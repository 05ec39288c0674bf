import contextlib
import json
import os

import keras
import numpy as np

from keras_dsd import backend
from keras_dsd.utils.file_utils import atomic_write
from keras_dsd.utils.file_utils import write_json

STATE_FILE = "checkpoint.json"


class TrainingCheckpoint(keras.callbacks.Callback):
    """Resumable training: `BackupAndRestore` with crash-safe writes.

    Every `save_every_n_epochs` epochs it writes the complete training state
    to `directory`:

    - `ckpt-<step>.weights.h5`: every weight of the model (the trained
      network, the EMA teacher and the sampling EMA) and the optimizer's
      state, its iteration counter included;
    - `checkpoint.json`: the epoch, the batches of data consumed (all
      epochs, the partial last one of a stopped `fit` included, counted in
      batches whatever `steps_per_execution` and gradient accumulation
      are) and the optimizer step reached, the weights file, and the
      random-number states of the model's seed generators (the diffusion
      times and noise continue where they stopped).

    A new weights file is complete before `checkpoint.json` points to it,
    and both are written to a temporary name and renamed, so a crash at any
    moment leaves the previous checkpoint usable. On `on_train_begin` the
    latest checkpoint, if any, is restored and `fit` continues from its
    epoch. Keras' `BackupAndRestore` rewrites its file in place, so a kill
    while writing loses the run; it also keeps no random-number state.

    Data order is the data pipeline's business: resuming is exact when the
    input stream can start at a given step (see
    `keras_dsd.datasets.ImageFolder.as_dataset(start_step=...)`, and
    `TrainingCheckpoint.read_state(directory)["batches"]`).

    Args:
        directory: string. Where the checkpoints live.
        save_every_n_epochs: int. Defaults to `1`.
        keep: int. Weights files kept. Defaults to `2`.
        write: bool. `False` on all but one process of a multi-process run:
            they restore but never write. Defaults to `True`.
    """

    def __init__(self, directory, save_every_n_epochs=1, keep=2, write=True):
        super().__init__()
        if keep < 1:
            raise ValueError(f"`keep` must be >= 1, got keep={keep}.")
        self.directory = directory
        self.save_every_n_epochs = save_every_n_epochs
        self.keep = keep
        self.write = write
        self.restored_state = None
        self.batches = 0
        self._batches_before_epoch = 0

    @staticmethod
    def read_state(directory):
        """The latest checkpoint's `checkpoint.json` as a dict, or `None`."""
        path = os.path.join(directory, STATE_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            state = json.load(f)
        weights = os.path.join(directory, state["weights"])
        if not os.path.exists(weights):
            raise ValueError(
                f"{path} points to {weights}, which is missing; the "
                f"checkpoint folder was edited by hand."
            )
        return state

    def _seed_states(self):
        return [
            v
            for v in self.model.variables
            if v.path.endswith("seed_generator_state")
        ]

    def on_train_begin(self, logs=None):
        state = self.read_state(self.directory)
        self.batches = state["batches"] if state else 0
        if state is None:
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            # TensorFlow builds the optimizer lazily, after this callback;
            # its state can only be loaded into built variables.
            strategy = getattr(self.model, "distribute_strategy", None)
            with strategy.scope() if strategy else contextlib.nullcontext():
                optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.directory, state["weights"]))
        seeds = self._seed_states()
        if len(seeds) != len(state["seed_states"]):
            raise ValueError(
                f"The checkpoint in {self.directory} holds "
                f"{len(state['seed_states'])} seed states; this model has "
                f"{len(seeds)}. It was written by a different model."
            )
        for variable, value in zip(seeds, state["seed_states"]):
            variable.assign(np.asarray(value).astype(variable.dtype))
        self.model._initial_epoch = state["epoch"]
        self.restored_state = state

    def on_train_end(self, logs=None):
        # Keras reads `_initial_epoch` on every `fit`; a later `fit` of the
        # same model must not start from the restored epoch again.
        self.model._initial_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._batches_before_epoch = self.batches

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the index, within the epoch, of the last batch that the
        # call consumed: with `steps_per_execution > 1` Keras calls this
        # once per chunk of batches, so counting calls would fall behind.
        self.batches = self._batches_before_epoch + batch + 1

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.save_every_n_epochs == 0:
            self.save(epoch + 1)

    def save(self, epoch):
        """Writes the checkpoint for `epoch` completed epochs."""
        if not self.write:
            return
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        name = f"ckpt-{step:09d}.weights.h5"
        with backend.writing_scope():
            atomic_write(
                os.path.join(self.directory, name),
                lambda path: self.model.save_weights(path, overwrite=True),
            )
        state = {
            "epoch": epoch,
            "step": step,
            "batches": self.batches,
            "weights": name,
            "seed_states": [
                np.asarray(keras.ops.convert_to_numpy(v)).tolist()
                for v in self._seed_states()
            ],
        }
        write_json(os.path.join(self.directory, STATE_FILE), state)
        # Only now that the state points to the new file: drop the oldest.
        names = sorted(
            n
            for n in os.listdir(self.directory)
            if n.startswith("ckpt-") and n.endswith(".weights.h5")
        )
        for old in names[: -self.keep]:
            os.remove(os.path.join(self.directory, old))
