"""Architectures of the built-in presets. None ships pretrained weights.

Each entry is keras-hub's preset metadata (`description`, exact `params`,
`path`) plus the constructor arguments (`config`), because there is no
Kaggle handle to read a `config.json` from.

Depth, width and heads per size are the library's own choice (the paper
gives only the total parameter counts: 42M / 118M / 205M). `params` is the
exact `count_params()` of the backbone, checked by `dsd_presets_test.py`.
"""

backbone_presets = {
    "dsd_tiny": {
        "metadata": {
            "description": (
                "Under 2M parameters, 32x32 images, patch 8, 10 classes. For "
                "CPU tests and the embedded MNIST-digits demo. Patch 8 with "
                "8 latent channels keeps the paper's 24x compression "
                "(16x16x3 -> 32 at 256px) and makes a CPU step 3-4x "
                "cheaper than patch 4."
            ),
            "params": 1_390_288,
            "path": "dsd",
            "paper_params": None,
        },
        "config": {
            "image_size": 32,
            "patch_size": 8,
            "latent_channels": 8,
            "hidden_dim": 128,
            "num_layers": 4,
            "num_heads": 4,
            "num_classes": 10,
        },
    },
    "dsd_s": {
        "metadata": {
            "description": "DSD-S: ImageNet 256x256, patch 16, about 42M.",
            "params": 41_131_840,
            "path": "dsd",
            "paper_params": 42_000_000,
        },
        "config": {
            "image_size": 256,
            "patch_size": 16,
            "latent_channels": 32,
            "hidden_dim": 512,
            "num_layers": 8,
            "num_heads": 8,
            "num_classes": 1000,
        },
    },
    "dsd_m": {
        "metadata": {
            "description": "DSD-M: ImageNet 256x256, patch 16, about 118M.",
            "params": 115_461_312,
            "path": "dsd",
            "paper_params": 118_000_000,
        },
        "config": {
            "image_size": 256,
            "patch_size": 16,
            "latent_channels": 32,
            "hidden_dim": 640,
            "num_layers": 15,
            "num_heads": 10,
            "num_classes": 1000,
        },
    },
    "dsd_b": {
        "metadata": {
            "description": "DSD-B: ImageNet 256x256, patch 16, about 205M.",
            "params": 210_718_528,
            "path": "dsd",
            "paper_params": 205_000_000,
        },
        "config": {
            "image_size": 256,
            "patch_size": 16,
            "latent_channels": 32,
            "hidden_dim": 896,
            "num_layers": 14,
            "num_heads": 14,
            "num_classes": 1000,
        },
    },
}
