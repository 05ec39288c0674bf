import json
import os

import keras
import keras_hub
import numpy as np
import pytest
from keras_hub.src.tests.test_case import TestCase

from keras_dsd.models.dsd.dsd_backbone import DSDBackbone
from keras_dsd.models.dsd.dsd_presets import backbone_presets as presets
from keras_dsd.testing import test_utils
from keras_dsd.testing.test_utils import TINY_CONFIG


def _inputs(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (batch, 8, 8, 3)).astype("float32")
    latents = rng.normal(size=(batch, 4, 4)).astype("float32")
    t = rng.uniform(0, 1, (batch,)).astype("float32")
    labels = rng.integers(0, 3, (batch,)).astype("int32")
    return images, latents, t, labels


def _all_outputs(backbone, inputs):
    images, latents, t, labels = inputs
    return [
        test_utils.to_numpy(backbone.encode(images)),
        test_utils.to_numpy(backbone.decode(latents)),
        test_utils.to_numpy(backbone.denoise(latents, t, labels)),
    ]


def _random_backbone(**overrides):
    return test_utils.randomize_weights(
        test_utils.tiny_backbone(**overrides), seed=1, stddev=0.2
    )


def test_role_shapes_and_dtypes():
    backbone = test_utils.tiny_backbone()
    assert backbone.num_tokens == 4
    assert backbone.latent_shape == (4, 4)
    assert backbone.null_class == 3
    latents, images, predictions = _all_outputs(backbone, _inputs(batch=3))
    assert latents.shape == (3, 4, 4)
    assert images.shape == (3, 8, 8, 3)
    assert predictions.shape == (3, 4, 4)
    for array in (latents, images, predictions):
        assert array.dtype == np.float32


def test_fresh_heads_decode_and_denoise_to_zero():
    # DiT-style zero-initialised output heads.
    _, images, predictions = _all_outputs(test_utils.tiny_backbone(), _inputs())
    np.testing.assert_array_equal(images, 0.0)
    np.testing.assert_array_equal(predictions, 0.0)


def test_dict_call_runs_all_roles():
    backbone = _random_backbone()
    images, latents, t, labels = _inputs()
    outputs = backbone(
        {
            "images": images,
            "noisy_latents": latents,
            "timesteps": t,
            "class_labels": labels,
        }
    )
    assert set(outputs) == {"latents", "reconstructions", "predictions"}
    encoded = test_utils.to_numpy(backbone.encode(images))
    np.testing.assert_allclose(
        test_utils.to_numpy(outputs["latents"]), encoded, atol=1e-5
    )
    np.testing.assert_allclose(
        test_utils.to_numpy(outputs["reconstructions"]),
        test_utils.to_numpy(backbone.decode(encoded)),
        atol=1e-4,
    )
    np.testing.assert_allclose(
        test_utils.to_numpy(outputs["predictions"]),
        test_utils.to_numpy(backbone.denoise(latents, t, labels)),
        atol=1e-5,
    )


def test_roles_share_the_trunk_but_differ():
    backbone = _random_backbone()
    _, latents, t, labels = _inputs()
    decoded = test_utils.to_numpy(backbone.decode(latents))
    assert np.abs(decoded).max() > 1e-3
    # Timestep and class change the denoiser's output.
    base = test_utils.to_numpy(backbone.denoise(latents, t, labels))
    other_t = test_utils.to_numpy(backbone.denoise(latents, 1 - t, labels))
    other_y = test_utils.to_numpy(
        backbone.denoise(latents, t, (labels + 1) % 3)
    )
    assert np.abs(base - other_t).max() > 1e-4
    assert np.abs(base - other_y).max() > 1e-4
    # One trunk: the only per-role weights are the heads and embeddings.
    names = {w.path.split("/")[0] for w in backbone.weights}
    assert {
        "transformer_block_0",
        "encoder_head",
        "decoder_head",
        "denoiser_head",
    } <= names
    assert not any("transformer_block_1" in n for n in names)


def test_latent_norm_per_token():
    backbone = _random_backbone(latent_channels=8)
    images = _inputs(batch=4)[0]
    latents = test_utils.to_numpy(backbone.encode(images))
    np.testing.assert_allclose(latents.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(latents.var(-1), 1.0, atol=1e-3)


def test_config_round_trip():
    backbone = _random_backbone(mlp_ratio=2.0, name="tiny")
    config = backbone.get_config()
    for key, value in TINY_CONFIG.items():
        assert config[key] == value
    assert config["mlp_ratio"] == 2.0
    restored = DSDBackbone.from_config(config)
    assert restored.get_config() == config
    assert restored.count_params() == backbone.count_params()
    restored.set_weights(backbone.get_weights())
    inputs = _inputs()
    for a, b in zip(
        _all_outputs(restored, inputs), _all_outputs(backbone, inputs)
    ):
        np.testing.assert_array_equal(a, b)


def test_serialize_deserialize():
    backbone = test_utils.tiny_backbone()
    serialized = keras.saving.serialize_keras_object(backbone)
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(serialized))
    )
    assert isinstance(restored, DSDBackbone)
    assert restored.get_config() == backbone.get_config()


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"image_size": 10}, "image_size=10 is not divisible by patch_size"),
        ({"patch_size": 3}, "not divisible by patch_size=3"),
        ({"hidden_dim": 18, "num_heads": 4}, "not divisible by num_heads"),
        ({"hidden_dim": 6, "num_heads": 2}, "divisible by 4"),
        ({"num_layers": 0}, "num_layers"),
        ({"num_classes": -1}, "num_classes"),
        ({"latent_channels": 2.5}, "latent_channels"),
        ({"patch_size": True}, "patch_size"),
        ({"image_size": "8"}, "image_size"),
    ],
)
def test_constructor_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        test_utils.tiny_backbone(**overrides)


def test_save_to_preset_and_from_preset(tmp_path):
    backbone = _random_backbone()
    preset_dir = str(tmp_path / "preset")
    backbone.save_to_preset(preset_dir)
    assert {"config.json", "model.weights.h5", "metadata.json"} <= set(
        os.listdir(preset_dir)
    )
    # No temporary files are left behind.
    assert not [f for f in os.listdir(preset_dir) if f.startswith(".tmp")]
    with open(os.path.join(preset_dir, "metadata.json")) as f:
        metadata = json.load(f)
    assert metadata["parameter_count"] == backbone.count_params()

    restored = DSDBackbone.from_preset(preset_dir)
    assert restored.get_config() == backbone.get_config()
    inputs = _inputs()
    for a, b in zip(
        _all_outputs(restored, inputs), _all_outputs(backbone, inputs)
    ):
        np.testing.assert_array_equal(a, b)

    # load_weights=False gives the architecture with fresh weights.
    fresh = DSDBackbone.from_preset(preset_dir, load_weights=False)
    assert fresh.get_config() == backbone.get_config()
    assert not np.allclose(
        _all_outputs(fresh, inputs)[0], _all_outputs(backbone, inputs)[0]
    )


def test_from_preset_with_overrides(tmp_path):
    backbone = _random_backbone()
    preset_dir = str(tmp_path / "preset")
    backbone.save_to_preset(preset_dir)
    restored = DSDBackbone.from_preset(preset_dir, num_classes=5)
    assert restored.num_classes == 5
    assert restored.null_class == 5


def test_from_unknown_preset_names_it():
    with pytest.raises(ValueError, match="preset='nope'"):
        DSDBackbone.from_preset("nope")


def test_builtin_preset_with_overrides():
    preset = presets["dsd_tiny"]["config"]
    image_size = 2 * preset["patch_size"]
    backbone = DSDBackbone.from_preset(
        "dsd_tiny",
        image_size=image_size,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
    )
    assert backbone.image_size == image_size and backbone.num_layers == 1
    # Arguments not overridden come from the preset.
    assert backbone.patch_size == preset["patch_size"]
    assert backbone.latent_channels == preset["latent_channels"]
    assert backbone.num_classes == preset["num_classes"]


def test_mixed_precision():
    backbone = test_utils.tiny_backbone(dtype="mixed_bfloat16")
    block = backbone.transformer_blocks[0]
    assert block.compute_dtype == "bfloat16"
    assert backbone.patch_embedding.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in backbone.weights)
    test_utils.randomize_weights(backbone, seed=1, stddev=0.2)
    for array in _all_outputs(backbone, _inputs()):
        assert array.dtype == np.float32
        assert np.all(np.isfinite(array))


def test_mixed_precision_config_round_trip():
    backbone = test_utils.tiny_backbone(dtype="mixed_bfloat16")
    restored = DSDBackbone.from_config(backbone.get_config())
    assert restored.transformer_blocks[0].compute_dtype == "bfloat16"
    assert backbone.dtype_policy.name == "mixed_bfloat16"


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.nn.Module API"
)
def test_torch_parameters_hold_every_weight():
    # `zero_grad()` only clears what `parameters()` lists: a weight missing
    # here keeps adding up its gradients across training steps.
    backbone = test_utils.tiny_backbone()
    parameters = {id(p) for p in backbone.parameters()}
    assert {id(w.value) for w in backbone.weights} <= parameters


class DSDBackboneKerasHubTest(TestCase):
    """keras-hub's own backbone, saving and preset checks."""

    def setUp(self):
        super().setUp()
        self.init_kwargs = dict(TINY_CONFIG)
        images, latents, t, labels = _inputs()
        self.input_data = {
            "images": images,
            "noisy_latents": latents,
            "timesteps": t,
            "class_labels": labels,
        }

    def test_backbone_basics(self):
        # keras-hub's precision check asserts that every sublayer computes
        # in the policy's dtype; the latent LayerNorm, the adaLN norms and
        # the timestep sinusoid stay float32 by design (for stable
        # statistics under mixed precision), so it cannot apply:
        # `test_mixed_precision` and
        # `test_intended_dtypes_under_mixed_precision` check the intended
        # dtypes instead.
        self.run_backbone_test(
            cls=DSDBackbone,
            init_kwargs=self.init_kwargs,
            input_data=self.input_data,
            expected_output_shape={
                "latents": (2, 4, 4),
                "reconstructions": (2, 8, 8, 3),
                "predictions": (2, 4, 4),
            },
            run_mixed_precision_check=False,
        )

    def test_intended_dtypes_under_mixed_precision(self):
        backbone = DSDBackbone(**self.init_kwargs, dtype="mixed_float16")
        spec = backbone.compute_output_spec(self.input_data)
        outputs = backbone(self.input_data)
        # The latent is normalised in float32; the two other heads compute
        # in the policy's dtype.
        expected = {
            "latents": "float32",
            "reconstructions": "float16",
            "predictions": "float16",
        }
        for key, dtype in expected.items():
            self.assertEqual(spec[key].dtype, dtype)
            self.assertEqual(
                keras.backend.standardize_dtype(outputs[key].dtype), dtype
            )
        self.assertEqual(backbone.latent_norm.compute_dtype, "float32")
        self.assertEqual(backbone.patch_embedding.compute_dtype, "float16")
        for weight in backbone.weights:
            self.assertEqual(weight.dtype, "float32")

    def test_saving(self):
        self.run_model_saving_test(
            cls=DSDBackbone,
            init_kwargs=self.init_kwargs,
            input_data=self.input_data,
        )

    def test_builtin_preset(self):
        images = np.zeros((1, 32, 32, 3), "float32")
        self.run_preset_test(
            cls=DSDBackbone,
            preset="dsd_tiny",
            input_data={
                "images": images,
                "noisy_latents": np.zeros((1, 16, 8), "float32"),
                "timesteps": np.full((1,), 0.5, "float32"),
                "class_labels": np.zeros((1,), "int32"),
            },
            expected_output_shape={
                "latents": (1, 16, 8),
                "reconstructions": (1, 32, 32, 3),
                "predictions": (1, 16, 8),
            },
        )

    def test_compute_output_spec_of_arrays(self):
        # The first layers get the arrays themselves, not symbolic tensors.
        spec = DSDBackbone(**self.init_kwargs).compute_output_spec(
            self.input_data
        )
        self.assertEqual(spec["latents"].shape, (2, 4, 4))
        self.assertEqual(spec["reconstructions"].shape, (2, 8, 8, 3))
        self.assertEqual(spec["predictions"].shape, (2, 4, 4))


def test_keras_hub_backbone_from_preset_finds_it(tmp_path):
    backbone = _random_backbone()
    preset_dir = str(tmp_path / "preset")
    backbone.save_to_preset(preset_dir)
    restored = keras_hub.models.Backbone.from_preset(preset_dir)
    assert type(restored) is DSDBackbone
    assert "dsd_tiny" in DSDBackbone.presets
    assert "dsd_b" in keras_hub.models.Backbone.presets
    inputs = _inputs()
    for a, b in zip(
        _all_outputs(restored, inputs), _all_outputs(backbone, inputs)
    ):
        np.testing.assert_array_equal(a, b)
