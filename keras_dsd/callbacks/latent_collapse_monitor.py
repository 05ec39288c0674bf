import warnings

from keras_dsd.callbacks.step_history import StepHistory

# The logged metric each collapse shows up in: `decoupled` loses rank,
# `naive` shrinks the latents' spread.
RANK = "latent_effective_rank"
STD = "latent_std"


class LatentCollapseMonitor(StepHistory):
    """Warns, or stops training, when the latent space collapses.

    The paper's two collapses show up in two different logged metrics: the
    `naive` objective shrinks the spread of the latents (`latent_std`
    falls, 0.45 -> 0.016 in the library's study, while the effective rank
    stays near 5), the `decoupled` one loses rank
    (`latent_effective_rank` -> 1.03). The monitor watches both, step by
    step: Keras logs running means over the epoch, so the monitor turns
    them back into per-step values, as `StepHistory` does (one reading per
    call with `steps_per_execution > 1`).

    Each metric's reference is the mean of its first `reference_steps`
    per-step values. A metric is low when it is below
    `rank_fraction` (`std_fraction`) times its reference, or below the
    absolute `min_rank` (`min_std`) when one is given. When a metric stays
    low for `patience` consecutive readings, the monitor warns once for
    that metric (`RuntimeWarning`) and records the alarm in `alarms`; with
    `stop_training=True` it also stops `fit`.

    Defaults: in the library's collapse study (dsd_tiny on digits, 500
    steps), `dsd` stayed above 0.46 of its early rank and above its early
    `latent_std`; `decoupled` fell to 0.21 of its rank and `naive` to 0.05
    of its `latent_std`.

    Args:
        rank_fraction: float. Relative rank threshold. Defaults to `0.4`.
        std_fraction: float. Relative `latent_std` threshold. Defaults to
            `0.2`.
        reference_steps: int. Readings averaged into each reference.
            Defaults to `10`.
        patience: int. Consecutive low readings before the alarm. Defaults
            to `20`.
        min_rank: float or `None`. Also an absolute rank threshold. The
            effective rank of `c`-channel latents is at most `c - 1` (see
            `keras_dsd.metrics.effective_rank`). Defaults to `None`.
        min_std: float or `None`. Also an absolute `latent_std` threshold.
            Defaults to `None`.
        stop_training: bool. Stop `fit` on the alarm. Defaults to `False`.

    Attributes:
        alarmed: bool. Whether any alarm was raised.
        alarms: list of dicts `{"metric", "step", "value", "threshold"}`,
            one per metric that raised its alarm (`step` counts batches
            from the start of training, 1-based).
        values: dict of lists: the per-step readings of both metrics.
        references: dict: each metric's reference, once known.
    """

    def __init__(
        self,
        rank_fraction=0.4,
        std_fraction=0.2,
        reference_steps=10,
        patience=20,
        min_rank=None,
        min_std=None,
        stop_training=False,
    ):
        super().__init__(keys=(RANK, STD))
        for name, value in (
            ("rank_fraction", rank_fraction),
            ("std_fraction", std_fraction),
        ):
            if not 0.0 <= value < 1.0:
                raise ValueError(
                    f"`{name}` must be in [0, 1), got {name}={value!r}."
                )
        for name, value in (
            ("reference_steps", reference_steps),
            ("patience", patience),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or (value < 1)
            ):
                raise ValueError(
                    f"`{name}` must be an int >= 1, got {name}={value!r}."
                )
        self.rank_fraction = rank_fraction
        self.std_fraction = std_fraction
        self.reference_steps = reference_steps
        self.patience = patience
        self.min_rank = min_rank
        self.min_std = min_std
        self.stop_training = stop_training
        self.alarmed = False
        self.alarms = []
        self.references = {}
        self._low_counts = {RANK: 0, STD: 0}

    @property
    def values(self):
        """The per-step readings of both metrics (`StepHistory.history`)."""
        return self.history

    def _threshold(self, metric):
        fraction, absolute = (
            (self.rank_fraction, self.min_rank)
            if metric == RANK
            else (self.std_fraction, self.min_std)
        )
        thresholds = [] if absolute is None else [absolute]
        if metric in self.references:
            thresholds.append(fraction * self.references[metric])
        return max(thresholds) if thresholds else None

    def on_step_values(self, values):
        for metric in (RANK, STD):
            if metric in values:
                self._read(metric, values[metric])

    def _read(self, metric, value):
        readings = self.history[metric]
        if len(readings) == self.reference_steps:
            self.references[metric] = sum(readings) / len(readings)
        threshold = self._threshold(metric)
        if threshold is None:
            return
        low = value < threshold
        self._low_counts[metric] = self._low_counts[metric] + 1 if low else 0
        if self._low_counts[metric] < self.patience:
            return
        if any(alarm["metric"] == metric for alarm in self.alarms):
            return
        self.alarmed = True
        self.alarms.append(
            {
                "metric": metric,
                "step": self.steps,
                "value": value,
                "threshold": threshold,
            }
        )
        warnings.warn(
            f"Latent collapse at step {self.steps}: {metric}={value:.4g} "
            f"stayed below {threshold:.4g} for {self.patience} readings"
            + (
                f" (reference {self.references[metric]:.4g})."
                if metric in self.references
                else "."
            ),
            RuntimeWarning,
            stacklevel=2,
        )
        if self.stop_training:
            self.model.stop_training = True
