"""float32 vs int8 (`model.quantize("int8")`) of a trained digits model.

Loads a preset written by `examples/train_digits.py`, then, for the float32
model and its int8 copy (keras' own quantization of the Dense layers):
sampling speed (images/s after a warm-up call that absorbs compilation),
weight memory of the generation network, class accuracy of the samples
under the digit classifier of `keras_dsd.metrics`, and reconstruction PSNR
on real digits. The classifier is trained once and saved, so that every
backend scores with the same one.

    KERAS_BACKEND=jax python examples/train_digits.py --minutes 4 \\
        --output-dir /tmp/digits_run
    for b in jax tensorflow torch; do
      KERAS_BACKEND=$b python benchmarks/quantization.py \\
          --preset /tmp/digits_run/preset
    done
"""

import argparse
import json
import os
import time

import keras
import numpy as np
from machine import describe_machine  # benchmarks/machine.py

import keras_dsd


def weight_bytes(network):
    return sum(
        int(np.prod(v.shape))
        * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        for v in network.variables
    )


def psnr(a, b):
    mse = np.mean((a.astype("float64") - b.astype("float64")) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def measure(model, class_labels, real, classifier, args):
    generate = dict(
        num_steps=args.num_steps,
        sampler="heun",
        seed=0,
        guidance_scale=args.guidance_scale,
        batch_size=50,
    )
    model.generate(class_labels[:50], **generate)  # compile
    start = time.perf_counter()
    samples = model.generate(class_labels, **generate)
    seconds = time.perf_counter() - start
    _, predicted = keras_dsd.metrics.classify_digits(classifier, samples)
    reconstructions = model.decode(model.encode(real))
    return {
        "images_per_second": len(class_labels) / seconds,
        "weight_megabytes": weight_bytes(model.inference_backbone) / 1e6,
        "class_accuracy": float(np.mean(predicted == class_labels)),
        "reconstruction_psnr_db": float(psnr(reconstructions, real)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="/tmp/digits_run/preset")
    parser.add_argument("--classifier", default="/tmp/digit_classifier.keras")
    parser.add_argument("--samples-per-class", type=int, default=5)
    parser.add_argument("--num-steps", type=int, default=16)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    images, labels = keras_dsd.datasets.load_mnist_digits(image_size=32)
    if os.path.exists(args.classifier):
        classifier = keras.saving.load_model(args.classifier)
    else:
        held_out = np.arange(len(images)) % 10 == 0
        # One epoch (about 93-95 % on held-out digits) keeps it cheap.
        classifier = keras_dsd.metrics.train_digit_classifier(
            images[~held_out], labels[~held_out], epochs=1, seed=0
        )
        classifier.save(args.classifier)
    real = images[::25][:200]
    class_labels = np.repeat(np.arange(10), args.samples_per_class)

    results = {}
    model = keras_dsd.models.DSDImageGenerator.from_preset(args.preset)
    results["float32"] = measure(model, class_labels, real, classifier, args)
    model.quantize("int8")
    results["int8"] = measure(model, class_labels, real, classifier, args)

    print(f"{keras.backend.backend()} | {describe_machine()}")
    print("| weights | images/s | weight MB | class accuracy | PSNR dB |")
    for name, r in results.items():
        print(
            f"| {name} | {r['images_per_second']:.1f} | "
            f"{r['weight_megabytes']:.2f} | {r['class_accuracy']:.0%} | "
            f"{r['reconstruction_psnr_db']:.2f} |"
        )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(
                {
                    "backend": keras.backend.backend(),
                    "machine": describe_machine(),
                    **results,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
