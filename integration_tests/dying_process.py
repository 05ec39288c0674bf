"""A data-parallel run whose process 1 dies after its second step.

Run as 2 processes by `distribution_test.py` (`multi_process.launch`).
Process 1 exits at once (`os._exit`, no clean-up, as a crashed host
would) after step 2 of a 200-step `fit`; the test checks that process 0
then exits with an error instead of waiting in the next collective.
"""

import os
import sys

import keras
import multi_process
import numpy as np

GLOBAL_BATCH = 2
STEPS = 200


class DieAfter(keras.callbacks.Callback):
    def __init__(self, process_index, step):
        super().__init__()
        self.process_index = process_index
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if self.process_index == 1 and batch + 1 == self.step:
            print("process 1: exiting", flush=True)
            os._exit(17)


def main():
    context, model, dataset = multi_process.tiny_data_parallel_run(
        GLOBAL_BATCH, STEPS
    )
    model.fit(
        dataset,
        epochs=1,
        steps_per_epoch=STEPS,
        callbacks=[DieAfter(context.process_index, step=2)],
        verbose=0,
    )
    print(f"process {context.process_index}: finished all {STEPS} steps")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
