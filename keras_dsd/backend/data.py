"""Reading the first batch of `fit`'s input without consuming it.

The data containers `fit` accepts are framework types (a `tf.data.Dataset`
on every backend, a `torch.utils.data.DataLoader` on PyTorch), so peeking
at them lives here, beside the other backend-specific code.
"""

import keras
import numpy as np

# What `first_batch` returns for a dataset without any batch.
EMPTY = (None, None)


def first_batch(x, y):
    """The first `(images, labels)` of fit's input, `EMPTY` if it has no
    batch at all, or `None` if it cannot be read without consuming it (a
    plain Python generator)."""
    if x is None:
        return None
    if isinstance(x, dict):
        return x.get("images"), x.get("labels", y)
    if isinstance(x, np.ndarray) or (y is not None and hasattr(x, "shape")):
        return x, y
    element = None
    try:
        import tensorflow as tf

        if isinstance(x, tf.data.Dataset):
            for element in x.take(1):
                break
            if element is None:
                return EMPTY
            element = keras.tree.map_structure(lambda t: t.numpy(), element)
    except ImportError:
        pass
    if element is None and isinstance(x, keras.utils.PyDataset):
        if x.num_batches == 0:
            return EMPTY
        element = x[0]
    if element is None and type(x).__name__ == "DataLoader":
        element = next(iter(x), None)
        if element is None:
            return EMPTY
    if element is None:
        return None
    if isinstance(element, dict):
        return element.get("images"), element.get("labels")
    if isinstance(element, (tuple, list)) and len(element) >= 2:
        return element[0], element[1]
    return element, None
