"""A small CNN digit classifier: the yardstick for generated digits.

Class-conditional samples of the embedded MNIST digits are "recognisable"
when a classifier trained on real digits assigns them to the class they were
generated for. This module trains such a classifier in seconds on a CPU and
reads its predictions and 64-d penultimate features (for a Fréchet distance
on digits). It is a digits-only yardstick, not FID.
"""

import keras
import numpy as np

from keras_dsd.utils import validation


def build_digit_classifier(image_size=32):
    """A 3-block CNN on uint8 RGB digits.

    Returns:
        `(classifier, extractor)`: `classifier` maps uint8-scale images
        `(B, image_size, image_size, 3)` to 10 logits and is the one to
        train; `extractor` shares its layers and returns
        `{"features": (B, 64), "logits": (B, 10)}`.
    """
    layers = keras.layers
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    for filters in (32, 64, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    features = layers.Dense(64, activation="relu", name="features")(x)
    logits = layers.Dense(10, name="logits")(features)
    classifier = keras.Model(inputs, logits, name="digit_classifier")
    extractor = keras.Model(
        inputs,
        {"features": features, "logits": logits},
        name="digit_features",
    )
    return classifier, extractor


def train_digit_classifier(images, labels, epochs=3, batch_size=64, seed=0):
    """Trains `build_digit_classifier` on real digits.

    Args:
        images: uint8 `(B, H, W, 3)` digits (e.g. from
            `keras_dsd.datasets.load_mnist_digits`).
        labels: int `(B,)` in `[0, 10)`.
        epochs: int. Adam (learning rate 1e-3) epochs.
        batch_size: int.
        seed: int. Initialisation and data order.

    Returns:
        The feature extractor (see `build_digit_classifier`), for
        `classify_digits`.
    """
    images = validation.check_images(images)
    labels = validation.check_labels(labels, 10, name="labels")
    if len(labels) != len(images):
        raise ValueError(
            f"`labels` has {len(labels)} entries for {len(images)} images."
        )
    epochs = validation.check_positive_int(epochs, "epochs")
    keras.utils.set_random_seed(seed)
    classifier, extractor = build_digit_classifier(images.shape[1])
    classifier.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    classifier.fit(
        images,
        labels,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
    )
    return extractor


def classify_digits(extractor, images, batch_size=100):
    """`(features, predicted_classes)` as numpy: float64 `(B, 64)` and int
    `(B,)`."""
    images = validation.check_images(
        images, extractor.input_shape[1], taker="the classifier"
    )
    outputs = extractor.predict(images, batch_size=batch_size, verbose=0)
    return (
        np.asarray(outputs["features"], "float64"),
        np.asarray(outputs["logits"]).argmax(axis=-1),
    )
