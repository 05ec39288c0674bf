import time

import keras

from keras_dsd import backend


class TimeLimit(keras.callbacks.Callback):
    """Stops `fit` cleanly once a wall-clock budget is spent.

    Checked after every batch, so training ends within one step of the
    budget; the epoch's callbacks (checkpoints, sample grids) still run.
    In a multi-process run the processes decide together, after the same
    batch: each says whether its own clock is past the budget, and all
    stop once any is (`keras_dsd.backend.process_values`, a small
    collective), so that none is left waiting in a collective for the
    others.

    Args:
        minutes: float. Training budget in minutes, counted from the start
            of `fit`.
    """

    def __init__(self, minutes):
        super().__init__()
        self.minutes = minutes
        self.start = None
        self.stopped_at_step = None

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        late = time.monotonic() - self.start > 60.0 * self.minutes
        if max(backend.process_values(float(late))) > 0:
            self.model.stop_training = True
            self.stopped_at_step = batch
