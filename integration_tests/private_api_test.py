"""The private names of other libraries that keras_dsd relies on.

`docs/private_apis.md` says why each is needed and which version bound in
`pyproject.toml` covers it. When a new release drops or renames one, this
test names it, instead of a failure deep inside preset loading or an
optimizer step (or, for an overridden method, no failure at all: an
override of a method the base class no longer calls is silently dead).
"""

import importlib
import importlib.metadata

import keras
import pytest

# (distribution, module, attribute path, what keras_dsd uses it for)
PRIVATE_NAMES = [
    ("keras-hub", "keras_hub.src.utils.preset_utils", name, "presets")
    for name in (
        "BUILTIN_PRESETS_FOR_BACKBONE",
        "CONFIG_FILE",
        "MODEL_WEIGHTS_FILE",
        "SHARDED_MODEL_WEIGHTS_CONFIG_FILE",
        "TASK_CONFIG_FILE",
        "TASK_WEIGHTS_FILE",
        "METADATA_FILE",
        "KAGGLE_SCHEME",
        "HF_SCHEME",
        "GS_SCHEME",
        "MODELSCOPE_SCHEME",
        "tf_registered_schemes",
        "get_preset_loader",
        "get_preset_saver",
        "check_file_exists",
        "load_json",
        "get_file",
        "KerasPresetLoader.check_backbone_class",
        "KerasPresetLoader.load_backbone",
        "KerasPresetLoader._load_backbone_weights",
        "KerasPresetSaver.save_backbone",
        "KerasPresetSaver._save_serialized_object",
        "KerasPresetSaver._save_metadata",
        "KerasPresetSaver._get_variables_size_in_bytes",
    )
] + [
    ("keras", "keras", "Layer._flatten_layers", "presets, torch.compile"),
    ("keras", "keras", "Layer._track_variables", "torch parameters"),
    ("keras", "keras", "Model._initial_epoch", "resumed training"),
    ("keras", "keras", "optimizers.AdamW._clip_gradients", "clipping"),
    ("keras", "keras", "optimizers.AdamW._backend_update_step", "update"),
    ("keras", "keras", "optimizers.AdamW._get_variable_index", "fused Adam"),
    ("keras", "keras", "optimizers.AdamW._momentums", "fused Adam"),
    ("keras", "keras", "optimizers.AdamW._velocities", "fused Adam"),
    (
        "keras",
        "keras.src.backend.torch.optimizers.torch_adamw",
        "AdamW",
        "the optimizer class Keras builds on PyTorch",
    ),
    (
        "jax",
        "jax._src.xla_bridge",
        "backends_are_initialized",
        "CPU setup before jax.distributed.initialize",
    ),
    (
        "jax",
        "jax._src.distributed",
        "global_state",
        "the process-count check at start-up",
    ),
    (
        "keras",
        "keras.src.backend.jax.distribution_lib",
        "initialize_rng",
        "one seed for all JAX processes",
    ),
    ("torch", "torch", "_foreach_mul", "clipping"),
    ("torch", "torch", "_foreach_norm", "clipping"),
    ("torch", "torch", "_foreach_lerp_", "EMA"),
    ("torch", "torch", "_fused_adam_", "fused Adam"),
    ("torch", "torch._dynamo.config", "recompile_limit", "torch.compile"),
    (
        "torch",
        "torch._dynamo.config",
        "accumulated_recompile_limit",
        "torch.compile",
    ),
    (
        "torch",
        "torch.autograd",
        "Variable._execution_engine.queue_callback",
        "multi-process gradient sync",
    ),
]
# Names that only one Keras backend defines (and keras_dsd uses only there).
BACKEND_ONLY = {"Layer._track_variables": "torch", "initialize_rng": "jax"}
# Attributes set on an instance (an optimizer once it is built), not on
# the class.
INSTANCE_ATTRIBUTES = ("_momentums", "_velocities", "_initial_epoch")


def _lookup(module, path):
    value = importlib.import_module(module)
    for part in path.split("."):
        if part in INSTANCE_ATTRIBUTES:
            value = value()
            if isinstance(value, keras.optimizers.Optimizer):
                value.build([keras.Variable([1.0])])
        value = getattr(value, part)
    return value


@pytest.mark.parametrize(
    "distribution, module, path, use",
    PRIVATE_NAMES,
    ids=[f"{m}.{p}" for _, m, p, _ in PRIVATE_NAMES],
)
def test_private_name_exists(distribution, module, path, use):
    backend = BACKEND_ONLY.get(path, keras.backend.backend())
    if backend != keras.backend.backend():
        pytest.skip(f"only the {backend} backend has it")
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{distribution} is not installed")
    try:
        _lookup(module, path)
    except (ImportError, AttributeError) as e:
        pytest.fail(
            f"{distribution} {version} has no `{module}.{path}` "
            f"({type(e).__name__}: {e}). keras_dsd uses it for: {use}. "
            "See docs/private_apis.md and the bound in pyproject.toml."
        )
