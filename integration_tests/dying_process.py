"""A data-parallel run whose process 1 dies after its second step.

Run as 2 processes by `distribution_test.py` (`multi_process.launch`).
Process 1 exits at once (`os._exit`, no clean-up, as a crashed host
would) after step 2 of a 200-step `fit`; the test checks that process 0
then exits with an error instead of waiting in the next collective.
"""

import os
import sys

import keras
import numpy as np

from keras_dsd.testing import test_utils
from keras_dsd.utils import distribution

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
    context = distribution.setup_data_parallel()
    with context.scope():
        model = test_utils.deterministic_generator(
            test_utils.tiny_backbone(), seed=0
        )
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01))
    import tensorflow as tf

    per_process = context.per_process_batch_size(GLOBAL_BATCH)
    images = test_utils.random_images(per_process)
    labels = test_utils.random_labels(per_process)
    dataset = (
        tf.data.Dataset.from_tensors((images, labels)).repeat().take(STEPS)
    )
    dataset = context.distribute_dataset(dataset)
    context.prepare_model(model)
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
