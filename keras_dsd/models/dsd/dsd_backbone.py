import keras
from keras import ops
from keras_hub.models import Backbone

from keras_dsd.layers.adaptive_layer_norm import FinalLayer
from keras_dsd.layers.class_embedding import ClassEmbedding
from keras_dsd.layers.class_embedding import RoleEmbedding
from keras_dsd.layers.dense import Dense
from keras_dsd.layers.patch_embedding import PatchEmbedding
from keras_dsd.layers.patch_embedding import unpatchify
from keras_dsd.layers.position_embedding import SinCosPositionEmbedding2D
from keras_dsd.layers.timestep_embedding import TimestepEmbedding
from keras_dsd.layers.transformer_block import DSDTransformerBlock
from keras_dsd.models import preset_utils

ENCODE_ROLE = 0
DECODE_ROLE = 1
DENOISE_ROLE = 2


@keras.saving.register_keras_serializable(package="keras_dsd")
class DSDBackbone(Backbone):
    """The one DSD network: encoder, decoder and latent denoiser in one trunk.

    A single stack of adaLN-Zero transformer blocks is shared by three
    roles, told apart by a learned role embedding in the conditioning:

    | role | input | conditioning | head |
    |---|---|---|---|
    | `encode(x)` | pixel patches + pos. | role | Dense -> c, LayerNorm |
    | `decode(z)` | Dense c -> D + pos. | role | Dense -> p*p*3 |
    | `denoise(z_t, t, y)` | Dense c -> D + pos. | role + t + y | Dense -> c |

    Images inside the backbone are floats in `[-1, 1]`, shape
    `(B, image_size, image_size, 3)`; latents are `(B, N, latent_channels)`
    with `N = (image_size / patch_size)**2`. Each latent token is normalised
    by a LayerNorm without scale or shift, so latents have a fixed per-token
    scale that matches the unit-variance diffusion noise. The denoiser
    predicts the clean latent (or the velocity, for the velocity objective
    modes of `DSDImageGenerator`).

    Called on a dict, the backbone runs all three roles:
    `{"images", "noisy_latents", "timesteps", "class_labels"}` ->
    `{"latents", "reconstructions", "predictions"}`.

    Args:
        image_size: int. Side of the square input images.
        patch_size: int. Side of the square patches; must divide `image_size`.
        latent_channels: int. Channels `c` of each latent token.
        hidden_dim: int. Width `D` of the transformer trunk.
        num_layers: int. Number of transformer blocks `L`.
        num_heads: int. Attention heads per block.
        num_classes: int. Number of image classes (a null class is added).
        mlp_ratio: float. MLP width as a multiple of `hidden_dim`.
            Defaults to `4.0`.
        dtype: string or `keras.mixed_precision.DTypePolicy`. The dtype
            policy of the layers. Normalisations and the timestep sinusoid
            always compute in float32.

    Example:
    ```python
    backbone = keras_dsd.models.DSDBackbone.from_preset("dsd_tiny")
    images = np.zeros((2, 32, 32, 3), "float32")
    latents = backbone.encode(images)             # (2, 16, 8)
    reconstructions = backbone.decode(latents)    # (2, 32, 32, 3)
    clean = backbone.denoise(latents, np.full((2,), 0.5), np.array([1, 2]))
    ```

    References:
    - [Wang & Zhang, Diffusion As Self-Distillation](https://arxiv.org/abs/2511.14716)
    - [Peebles & Xie, Scalable Diffusion Models with Transformers](https://arxiv.org/abs/2212.09748)
    """

    def __init__(
        self,
        image_size,
        patch_size,
        latent_channels,
        hidden_dim,
        num_layers,
        num_heads,
        num_classes,
        mlp_ratio=4.0,
        dtype=None,
        **kwargs,
    ):
        _validate_architecture(
            image_size,
            patch_size,
            latent_channels,
            hidden_dim,
            num_layers,
            num_heads,
            num_classes,
        )
        grid_size = image_size // patch_size

        # === Layers ===
        self.patch_embedding = PatchEmbedding(
            patch_size, hidden_dim, dtype=dtype, name="patch_embedding"
        )
        self.latent_embedding = Dense(
            hidden_dim, dtype=dtype, name="latent_embedding"
        )
        self.position_embedding = SinCosPositionEmbedding2D(
            grid_size, dtype=dtype, name="position_embedding"
        )
        self.role_embedding = RoleEmbedding(
            hidden_dim, dtype=dtype, name="role_embedding"
        )
        self.timestep_embedding = TimestepEmbedding(
            hidden_dim, dtype=dtype, name="timestep_embedding"
        )
        self.class_embedding = ClassEmbedding(
            num_classes, hidden_dim, dtype=dtype, name="class_embedding"
        )
        self.transformer_blocks = [
            DSDTransformerBlock(
                hidden_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                dtype=dtype,
                name=f"transformer_block_{i}",
            )
            for i in range(num_layers)
        ]
        # The encoder head is not zero-initialised: a zero output would sit
        # at the singular point of the LayerNorm that follows it.
        self.encoder_head = FinalLayer(
            hidden_dim,
            latent_channels,
            zero_init=False,
            dtype=dtype,
            name="encoder_head",
        )
        self.latent_norm = keras.layers.LayerNormalization(
            epsilon=1e-6,
            center=False,
            scale=False,
            dtype="float32",
            name="latent_norm",
        )
        self.decoder_head = FinalLayer(
            hidden_dim,
            patch_size * patch_size * 3,
            dtype=dtype,
            name="decoder_head",
        )
        self.denoiser_head = FinalLayer(
            hidden_dim, latent_channels, dtype=dtype, name="denoiser_head"
        )

        # === Config (the role methods below read it) ===
        self.image_size = image_size
        self.patch_size = patch_size
        self.latent_channels = latent_channels
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.mlp_ratio = mlp_ratio

        # === Functional Model ===
        num_tokens = grid_size * grid_size
        image_input = keras.Input((image_size, image_size, 3), name="images")
        latent_input = keras.Input(
            (num_tokens, latent_channels), name="noisy_latents"
        )
        time_input = keras.Input((), name="timesteps")
        label_input = keras.Input((), dtype="int32", name="class_labels")
        latents = self._encode(image_input)
        outputs = {
            "latents": latents,
            "reconstructions": self._decode(latents),
            "predictions": self._denoise(latent_input, time_input, label_input),
        }
        super().__init__(
            inputs={
                "images": image_input,
                "noisy_latents": latent_input,
                "timesteps": time_input,
                "class_labels": label_input,
            },
            outputs=outputs,
            dtype=dtype,
            **kwargs,
        )
        if keras.backend.backend() == "torch":
            # keras-hub's `Backbone` routes the attributes set before
            # `Module.__init__` around torch, so torch's parameter list was
            # taken without them: take it again, or `parameters()` and
            # `zero_grad()` miss every weight (gradients then pile up).
            self._track_variables()

    # === Roles ===
    @property
    def num_tokens(self):
        return (self.image_size // self.patch_size) ** 2

    @property
    def latent_shape(self):
        """Shape of one image's latent, `(N, latent_channels)`."""
        return (self.num_tokens, self.latent_channels)

    @property
    def null_class(self):
        """The class id that means "no class" (for classifier-free guidance)."""
        return self.class_embedding.null_class

    def _trunk(self, tokens, conditioning):
        for block in self.transformer_blocks:
            tokens = block(tokens, conditioning)
        return tokens

    def _encode(self, images):
        tokens = self.position_embedding(self.patch_embedding(images))
        conditioning = self.role_embedding(tokens, role=ENCODE_ROLE)
        tokens = self._trunk(tokens, conditioning)
        return self.latent_norm(self.encoder_head(tokens, conditioning))

    def _decode(self, latents):
        tokens = self.position_embedding(self.latent_embedding(latents))
        conditioning = self.role_embedding(tokens, role=DECODE_ROLE)
        tokens = self._trunk(tokens, conditioning)
        patches = self.decoder_head(tokens, conditioning)
        return unpatchify(patches, self.patch_size, self.image_size)

    def _denoise(self, noisy_latents, timesteps, class_labels):
        tokens = self.position_embedding(self.latent_embedding(noisy_latents))
        conditioning = (
            self.role_embedding(tokens, role=DENOISE_ROLE)
            + ops.cast(self.timestep_embedding(timesteps), tokens.dtype)
            + ops.cast(self.class_embedding(class_labels), tokens.dtype)
        )
        tokens = self._trunk(tokens, conditioning)
        return self.denoiser_head(tokens, conditioning)

    def encode(self, images):
        """Images in `[-1, 1]`, `(B, H, W, 3)` -> float32 latents
        `(B, N, c)`."""
        return ops.cast(self._encode(images), "float32")

    def decode(self, latents):
        """Latents `(B, N, c)` -> float32 images in about `[-1, 1]`."""
        return ops.cast(self._decode(latents), "float32")

    def denoise(self, noisy_latents, timesteps, class_labels):
        """Noisy latents at times `t` (`(B,)`, 1 = clean) and labels -> the
        network output `(B, N, c)` in float32: the clean-latent prediction
        (or the velocity, for the velocity objective modes)."""
        return ops.cast(
            self._denoise(noisy_latents, timesteps, class_labels), "float32"
        )

    def compute_output_spec(self, inputs, **kwargs):
        # Inputs may be arrays (numpy or backend tensors): keras' functional
        # graph passes those straight to the first layers, whose
        # `compute_output_shape` then gets no shape. Symbolic specs work.
        specs = keras.tree.map_structure(
            lambda x: keras.KerasTensor(
                tuple(x.shape), dtype=keras.backend.standardize_dtype(x.dtype)
            ),
            inputs,
        )
        return super().compute_output_spec(specs, **kwargs)

    # === Config ===
    def get_config(self):
        # keras-hub's `Backbone.get_config` adds name, trainable and the
        # dtype policy (a per-layer policy map once quantized).
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "latent_channels": self.latent_channels,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_classes": self.num_classes,
            "mlp_ratio": self.mlp_ratio,
        }

    # === Presets ===
    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Builds a backbone from a built-in preset name or a saved preset.

        Built-in presets (`DSDBackbone.presets`) have no pretrained weights:
        they return freshly initialised networks of the recorded
        architecture. Any other handle goes through keras-hub's loader: a
        local folder written by `save_to_preset`, `"kaggle://..."`,
        `"hf://..."` or `"gs://..."`. A task preset's backbone holds the
        weights the task generates with (its sampling EMA).

        Args:
            preset: string. A built-in preset name such as `"dsd_tiny"`, a
                preset folder, or a Kaggle / Hugging Face / GCS handle.
            load_weights: bool. Load the saved weights. Defaults to `True`.
            **kwargs: Overrides of the preset's constructor arguments, such as
                `dtype`. Overriding an architecture argument (e.g.
                `num_classes`) gives a freshly initialised network.
        """
        return preset_utils.load_backbone(cls, preset, load_weights, **kwargs)

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """Writes `config.json`, the weights and `metadata.json`.

        The layout is keras-hub's (it passes `keras_hub.upload_preset`'s
        checks); weights above `max_shard_size` GB are sharded. Refuses a
        folder that holds another model's preset.
        """
        preset_utils.save_backbone(self, preset_dir, max_shard_size)


def _validate_architecture(
    image_size,
    patch_size,
    latent_channels,
    hidden_dim,
    num_layers,
    num_heads,
    num_classes,
):
    for name, value in (
        ("image_size", image_size),
        ("patch_size", patch_size),
        ("latent_channels", latent_channels),
        ("hidden_dim", hidden_dim),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
        ("num_classes", num_classes),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"DSDBackbone: `{name}` must be a positive int, got {value!r}."
            )
    if image_size % patch_size:
        raise ValueError(
            f"DSDBackbone: image_size={image_size} is not divisible by "
            f"patch_size={patch_size}; choose a patch size that divides the "
            "image size."
        )
    if hidden_dim % num_heads:
        raise ValueError(
            f"DSDBackbone: hidden_dim={hidden_dim} is not divisible by "
            f"num_heads={num_heads}."
        )
    if hidden_dim % 4:
        raise ValueError(
            f"DSDBackbone: hidden_dim={hidden_dim} must be divisible by 4 "
            "(the 2-D sin-cos position table splits it in four)."
        )
