import time

import keras


class TimeLimit(keras.callbacks.Callback):
    """Stops `fit` cleanly once a wall-clock budget is spent.

    Checked after every batch, so training ends within one step of the
    budget; the epoch's callbacks (checkpoints, sample grids) still run.

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
        if time.monotonic() - self.start > 60.0 * self.minutes:
            self.model.stop_training = True
            self.stopped_at_step = batch
