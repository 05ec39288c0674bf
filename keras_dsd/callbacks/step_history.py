import keras


class StepHistory(keras.callbacks.Callback):
    """Records the value of logged metrics at every training step.

    Keras logs, after each batch, the mean of a metric since the start of
    the epoch. This callback turns those running means back into the
    step's own value: after `n` steps of an epoch, with `p` steps at the
    previous call, the `n - p` new steps have the mean
    `(n * mean_n - p * mean_p) / (n - p)` (one value per call, so with
    `steps_per_execution > 1` a value covers the steps of one call).

    Args:
        keys: sequence of strings or `None`. The metrics to record; `None`
            records every logged metric. Defaults to `None`.

    Attributes:
        history: dict of lists: the per-step values of each metric.
        steps: int. Training steps seen so far, over all epochs.

    Example:
    ```python
    history = keras_dsd.callbacks.StepHistory(keys=["latent_std"])
    model.fit(images, labels, epochs=2, callbacks=[history])
    history.history["latent_std"]          # one value per step
    ```
    """

    def __init__(self, keys=None):
        super().__init__()
        self.keys = None if keys is None else tuple(keys)
        self.history = {key: [] for key in self.keys or ()}
        self.steps = 0
        self._epoch_steps = 0
        self._epoch_means = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_steps = 0
        self._epoch_means = {}

    def on_train_batch_end(self, batch, logs=None):
        steps = batch + 1  # steps of this epoch so far
        if steps <= self._epoch_steps:
            # A new epoch whose `on_epoch_begin` this callback did not see.
            self.on_epoch_begin(None)
        new_steps = steps - self._epoch_steps
        self.steps += new_steps
        values = {}
        for key, logged in (logs or {}).items():
            if self.keys is not None and key not in self.keys:
                continue
            mean = float(keras.ops.convert_to_numpy(logged))
            previous = self._epoch_means.get(key, 0.0)
            values[key] = (
                steps * mean - self._epoch_steps * previous
            ) / new_steps
            self._epoch_means[key] = mean
            self.history.setdefault(key, []).append(values[key])
        self._epoch_steps = steps
        self.on_step_values(values)

    def on_step_values(self, values):
        """Called with `{metric: this step's value}` after each call;
        for subclasses."""
