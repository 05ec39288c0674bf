"""A data-parallel run whose processes have different time limits.

Run as 2 processes by `distribution_test.py` (`multi_process.launch`).
Process 1's `TimeLimit` budget (2 s) runs out long before process 0's
(10 min), as when the processes' clocks or start times differ; each step
takes at least 0.1 s, and the clocks start after the first (compiled)
batch. Each process prints `time_limit: {json}` with the batch its
`TimeLimit` stopped after and the batches it ran.
"""

import json
import sys
import time

import keras
import multi_process
import numpy as np

from keras_dsd.callbacks import TimeLimit

GLOBAL_BATCH = 2
STEPS = 200


class Slow(keras.callbacks.Callback):
    """Makes every step last at least 0.1 s and counts them."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        time.sleep(0.1)


class TimeLimitAfterCompiling(TimeLimit):
    """`TimeLimit` with its clock started after the first batch, so that
    compiling it (seconds on JAX and TensorFlow) spends no budget."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.start = time.monotonic()
        super().on_train_batch_end(batch, logs)


def main():
    context, model, dataset = multi_process.tiny_data_parallel_run(
        GLOBAL_BATCH, STEPS
    )
    slow = Slow()
    minutes = 10.0 if context.process_index == 0 else 2 / 60
    limit = TimeLimitAfterCompiling(minutes=minutes)
    model.fit(
        dataset,
        epochs=1,
        steps_per_epoch=STEPS,
        callbacks=[slow, limit],
        verbose=0,
    )
    result = {
        "process": context.process_index,
        "stopped_at_step": limit.stopped_at_step,
        "batches": slow.batches,
        "seconds": time.monotonic() - limit.start,
    }
    print(f"time_limit: {json.dumps(result)}", flush=True)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
