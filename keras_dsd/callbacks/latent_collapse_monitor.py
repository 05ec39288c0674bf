import warnings

import keras


class LatentCollapseMonitor(keras.callbacks.Callback):
    """Warns, or stops training, when the latent space collapses.

    Reads `latent_effective_rank` from the training logs (see
    `keras_dsd.metrics.effective_rank`). When it stays below `min_rank` for
    `patience` consecutive checks, the monitor warns once; with
    `stop_training=True` it also stops `fit`.

    Args:
        min_rank: float. Alarm threshold. A healthy `c`-channel latent keeps
            an effective rank near `c`; the naive objective drives it
            towards 1.
        patience: int. Consecutive low readings before the alarm.
            Defaults to `1`.
        check: string. `"batch"` or `"epoch"`. Defaults to `"epoch"`.
        stop_training: bool. Stop `fit` on the alarm. Defaults to `False`.
    """

    def __init__(self, min_rank, patience=1, check="epoch",
                 stop_training=False):
        super().__init__()
        if check not in ("batch", "epoch"):
            raise ValueError(
                f"`check` must be 'batch' or 'epoch', got check={check!r}."
            )
        self.min_rank = min_rank
        self.patience = patience
        self.check = check
        self.stop_training = stop_training
        self.low_count = 0
        self.alarmed = False

    def _read(self, logs):
        rank = (logs or {}).get("latent_effective_rank")
        if rank is None:
            return
        rank = float(rank)
        self.low_count = self.low_count + 1 if rank < self.min_rank else 0
        if self.low_count >= self.patience and not self.alarmed:
            self.alarmed = True
            message = (
                f"Latent collapse: latent_effective_rank={rank:.3f} stayed "
                f"below min_rank={self.min_rank} for {self.low_count} "
                f"{self.check}(es)."
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if self.stop_training:
                self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        if self.check == "batch":
            self._read(logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.check == "epoch":
            self._read(logs)
