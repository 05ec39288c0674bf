import os

import keras

from keras_dsd.utils.image_grid import save_image_grid


class SampleGrid(keras.callbacks.Callback):
    """Saves a PNG grid of generated samples every few epochs.

    Samples come from `model.generate` (the sampling-EMA weights) with a
    fixed seed, so successive grids show the same noise as training goes on.

    Args:
        path: string. Output path; may contain `{epoch}` (1-based), e.g.
            `"samples/epoch_{epoch:03d}.png"`.
        class_labels: sequence of ints. One sample per label, row-major.
        rows: int. Grid rows.
        every_n_epochs: int. Defaults to `1`.
        num_steps: int. Sampler steps. Defaults to `16`.
        sampler: string. Defaults to `"heun"`.
        seed: int. Defaults to `0`.
        scale: int. PNG upscaling factor. Defaults to `1`.
        write: bool. `False` on all but one process of a multi-process
            run: they sample too (every process must run the same
            computations over weights laid out across processes) but
            write nothing. Defaults to `True`.
    """

    def __init__(
        self,
        path,
        class_labels,
        rows,
        every_n_epochs=1,
        num_steps=16,
        sampler="heun",
        seed=0,
        scale=1,
        write=True,
    ):
        super().__init__()
        self.path = path
        self.class_labels = list(class_labels)
        self.rows = rows
        self.every_n_epochs = every_n_epochs
        self.num_steps = num_steps
        self.sampler = sampler
        self.seed = seed
        self.scale = scale
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        images = self.model.generate(
            self.class_labels,
            num_steps=self.num_steps,
            sampler=self.sampler,
            seed=self.seed,
        )
        if not self.write:
            return
        path = self.path.format(epoch=epoch + 1)
        save_image_grid(images, path, rows=self.rows, scale=self.scale)
        print(f"\nSampleGrid: wrote {os.path.abspath(path)}")
