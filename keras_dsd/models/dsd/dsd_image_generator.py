"""The DSD task: training objective, teacher and sampling EMAs, generation.

Why `DSDImageGenerator` is a `keras.Model` that follows keras-hub's Task
conventions rather than a `keras_hub.models.Task` subclass (keras-hub
0.32.0, read in its source):

- `Task` is a `PipelineModel`, whose `fit` rebuilds its input: numpy is
  re-batched into a grain (or `tf.data`) dataset, and anything that is not
  a grain or `tf.data` dataset afterwards is refused by
  `pipeline_model._apply_preprocessing` ("Expected `x` to be a `grain` or
  `tf.data` dataset"). A `keras.utils.PyDataset` or a torch `DataLoader`,
  which `fit` must accept here, would not train.
- `KerasPresetLoader.load_task` loads `model.weights.h5` into
  `task.backbone`, the trained network. Here `model.weights.h5` holds the
  sampling EMA, so that a backbone preset generates with the good weights;
  keras-hub's task loader would overwrite the trained network with it.
- What `Task` adds beyond that is kept: `compile=True` compiles with the
  defaults at construction, `from_preset` / `save_to_preset` go through
  keras-hub's loader and saver (`keras_dsd.models.preset_utils`), and the
  task preset is `task.json` + `task.weights.h5` beside the backbone files.
"""

import warnings

import keras
import numpy as np
from keras import ops

from keras_dsd import samplers
from keras_dsd.backend import compile_inference_function
from keras_dsd.backend import default_jit_compile
from keras_dsd.backend import gather_replicas
from keras_dsd.backend import mean_over_processes
from keras_dsd.backend import prepare_compiled_training
from keras_dsd.backend import replica_id
from keras_dsd.backend import scale_loss_for_replicas
from keras_dsd.backend import train_step_with_updates
from keras_dsd.models import preset_utils
from keras_dsd.models.dsd import ema
from keras_dsd.models.dsd import objectives
from keras_dsd.models.dsd.dsd_backbone import DSDBackbone
from keras_dsd.models.dsd.latent_metrics import effective_rank
from keras_dsd.models.dsd.latent_metrics import latent_std
from keras_dsd.optimizers import AdamW
from keras_dsd.utils import schedules
from keras_dsd.utils import validation

TEACHERS = ("ema", "online")
TIME_DISTRIBUTIONS = ("logit_normal", "uniform")
# Guard of `1 - t` when sampling. The samplers never evaluate the network at
# t = 1, so with up to 1000 steps this never binds; the training weight's
# `t_min` is not used here because it would stop the last step short of the
# clean-latent prediction once the grid is finer than `1 / t_min` steps.
SAMPLING_EPSILON = 1e-4


@keras.saving.register_keras_serializable(package="keras_dsd")
class DSDImageGenerator(keras.Model):
    """Trains a `DSDBackbone` end-to-end and generates class-conditional images.

    One network encodes, decodes and denoises. Each training step, for images
    `x` and labels `y`:

    ```
    z1 = E(x)                            online latent (gradients flow)
    z2 = stop_gradient(E_teacher(x))     target latent from the EMA teacher
    L_rec  = mean |G(z1) - x|^2
    z_t = t * z1 + (1 - t) * eps,        t ~ logit-normal, eps ~ N(0, I)
    L_diff = mean w(t) |F(z_t, t, y) - z2|^2,  w(t) = 1 / max(1 - t, t_min)^2
    loss = L_rec + diffusion_loss_weight * L_diff
    ```

    After every optimizer step the teacher and the sampling EMA move towards
    the trained weights, `xi <- m_k * xi + (1 - m_k) * theta`, with the
    warm-up `m_k = min(m, (1 + k) / (10 + k))` at EMA update `k`. The model
    counts its EMA updates in its own weight `ema_step` (saved and loaded
    with the other weights, so a resumed run continues the warm-up); it
    grows only when the optimizer really updated the weights: once per
    `gradient_accumulation_steps` batches, and not on a step that a
    `LossScaleOptimizer` skipped for non-finite gradients.
    `objective="naive"` and `"decoupled"` are the paper's ablations (see
    `keras_dsd.models.dsd.objectives`).

    Data for `fit()` yields `(images, labels)` or
    `{"images": images, "labels": labels}`: uint8 images of the backbone's
    size and int labels in `[0, num_classes)`. Every step logs `loss`,
    `reconstruction_loss`, `diffusion_loss`, `latent_std` and
    `latent_effective_rank` (the collapse alarm). The two latent metrics are
    computed on the latents of the whole global batch on every backend and
    device count (replicas gather their latents first); the rank's maximum
    is `c - 1`, since the latent LayerNorm removes each token's channel
    mean (see `keras_dsd.metrics.effective_rank`). Like every Keras metric,
    the logs are running means over the epoch's steps.

    Which weights run: `call()` / `predict()` are the training-time
    autoencoder pass and use the trained (online) network, `backbone`;
    `generate`, `encode` and `decode` use `inference_backbone`, the
    sampling EMA when there is one (`ema_decay` not `None`), else the
    trained network.

    Mixed precision: a `"mixed_float16"` backbone (or global policy) gets
    loss scaling from `compile()`, which wraps the optimizer in a
    `keras.optimizers.LossScaleOptimizer`.

    Args:
        backbone: `keras_dsd.models.DSDBackbone`. The network.
        objective: string. `"dsd"` (clean-latent prediction with a
            stop-gradient target), `"decoupled"` (velocity prediction with a
            stop-gradient target) or `"naive"` (velocity prediction, target
            from the online latent). Defaults to `"dsd"`.
        teacher: string. Where the target latent comes from: `"ema"` (an
            EMA copy of the network) or `"online"` (the stop-gradient online
            latent, SimSiam-like). Defaults to `"ema"`.
        teacher_decay: float. EMA decay `m` of the teacher. Defaults to
            `0.999`.
        ema_decay: float or `None`. EMA decay of the sampling weights;
            `None` samples from the trained weights. Defaults to `0.9999`.
        ema_warmup: bool. Use the `(1 + k) / (10 + k)` warm-up for both
            EMAs. Defaults to `True`.
        diffusion_loss_weight: float. `lambda_diff`. Defaults to `1.0`.
        t_min: float. Lower clamp of `1 - t` in the loss weight. Defaults to
            `0.05`.
        time_distribution: string. `"logit_normal"` or `"uniform"` training
            times. Defaults to `"logit_normal"`.
        time_mean: float. Mean of the logit-normal. Defaults to `-0.8`.
        time_std: float. Std of the logit-normal. Defaults to `0.8`.
        label_dropout: float. Probability of replacing a label by the null
            class in training, for classifier-free guidance. Defaults to `0`
            (in the recipe study, 0.1 enabled guidance but cost unguided
            samples accuracy).
        seed: int or `None`. Seed of the training noise and times.
        compile: bool. Compile with the defaults of `compile()` at
            construction, as keras-hub tasks do, so that `fit` works right
            away. Call `compile()` again to change them. Defaults to `True`.

    The defaults of the training times and `compile()`'s optimizer come
    from the multi-seed recipe study on the digits (docs/recipe_study.md);
    the paper does not state them.

    Example:
    ```python
    backbone = keras_dsd.models.DSDBackbone.from_preset("dsd_tiny")
    model = keras_dsd.models.DSDImageGenerator(backbone=backbone)
    model.fit(dataset, epochs=1)  # compiled with its defaults already
    images = model.generate(class_labels=[0, 7], num_steps=16, seed=0)
    ```

    References:
    - [Wang & Zhang, Diffusion As Self-Distillation](https://arxiv.org/abs/2511.14716)
    """

    def __init__(
        self,
        backbone,
        objective="dsd",
        teacher="ema",
        teacher_decay=0.999,
        ema_decay=0.9999,
        ema_warmup=True,
        diffusion_loss_weight=1.0,
        t_min=0.05,
        time_distribution="logit_normal",
        time_mean=-0.8,
        time_std=0.8,
        label_dropout=0.0,
        seed=None,
        compile=True,
        **kwargs,
    ):
        if not isinstance(backbone, DSDBackbone):
            raise ValueError(
                "`backbone` must be a keras_dsd.models.DSDBackbone; got "
                f"{type(backbone).__name__}."
            )
        objectives.check_objective(objective)
        validation.check_choice(teacher, TEACHERS, "teacher")
        validation.check_choice(
            time_distribution, TIME_DISTRIBUTIONS, "time_distribution"
        )
        ema.check_decay(teacher_decay, "teacher_decay")
        if ema_decay is not None:
            ema.check_decay(ema_decay, "ema_decay")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(
                f"`label_dropout` must be in [0, 1), got {label_dropout!r}."
            )
        if not 0.0 < t_min < 1.0:
            raise ValueError(f"`t_min` must be in (0, 1), got {t_min!r}.")
        super().__init__(**kwargs)

        # === Networks ===
        self.backbone = backbone
        uses_teacher = objectives.get(objective).uses_target_latent
        self.teacher_backbone = (
            ema.frozen_copy(backbone, "teacher_backbone")
            if uses_teacher and teacher == "ema"
            else None
        )
        self.ema_backbone = (
            ema.frozen_copy(backbone, "ema_backbone")
            if ema_decay is not None
            else None
        )
        self.seed_generator = _ReplicaSeedGenerator(seed)
        # EMA updates done so far (the warm-up's `k`): a weight of the model,
        # so that `save`, `load_weights` and checkpoints carry it.
        self.ema_step = keras.Variable(
            0,
            dtype="int32",
            trainable=False,
            aggregation="only_first_replica",
            name="ema_step",
        )
        self._ema_step_from_optimizer = False

        # === Metrics ===
        self.reconstruction_loss_tracker = keras.metrics.Mean(
            name="reconstruction_loss"
        )
        self.diffusion_loss_tracker = keras.metrics.Mean(name="diffusion_loss")
        self.latent_std_tracker = keras.metrics.Mean(name="latent_std")
        self.latent_rank_tracker = keras.metrics.Mean(
            name="latent_effective_rank"
        )

        # === Config ===
        self.objective = objective
        self.teacher = teacher
        self.teacher_decay = teacher_decay
        self.ema_decay = ema_decay
        self.ema_warmup = ema_warmup
        self.diffusion_loss_weight = diffusion_loss_weight
        self.t_min = t_min
        self.time_distribution = time_distribution
        self.time_mean = time_mean
        self.time_std = time_std
        self.label_dropout = label_dropout
        self.seed = seed
        self._inference_functions = {}
        self.built = True
        if compile:
            self.compile()

    @property
    def inference_backbone(self):
        """The weights used by `generate`, `encode` and `decode`: the
        sampling EMA when there is one, else the trained network."""
        return self.ema_backbone or self.backbone

    # === Training ===
    def compile(self, optimizer="auto", jit_compile="auto", **kwargs):
        """Configures training with sensible defaults.

        Args:
            optimizer: `"auto"` or any Keras optimizer. `"auto"` is AdamW
                (`keras_dsd.optimizers.AdamW`) without weight decay,
                gradient clipping at norm 1 and a linear warm-up over 100
                updates to a constant learning rate of
                `2e-3 * 128 / hidden_dim`
                (`keras_dsd.utils.schedules.default_learning_rate`: the
                recipe study's best for `dsd_tiny`, scaled as
                `1 / width`; untested at larger widths).
            jit_compile: `"auto"` compiles with XLA on JAX and TensorFlow
                (not under a multi-replica strategy on CPU devices, where
                XLA fails) and runs PyTorch eagerly (`torch.compile` is slow
                to start). `True` on PyTorch is `torch.compile`, with
                Dynamo's recompile limit raised to the model's number of
                layers so that every layer compiles
                (`keras_dsd.backend.prepare_compiled_training`).
            **kwargs: passed to `keras.Model.compile`. No `loss` is needed:
                the DSD objective is built in.
        """
        if optimizer == "auto":
            optimizer = AdamW(
                learning_rate=schedules.warmup_schedule(
                    schedules.default_learning_rate(self.backbone.hidden_dim),
                    warmup_steps=100,
                ),
                weight_decay=0.0,
                clipnorm=1.0,
            )
        if jit_compile == "auto":
            jit_compile = default_jit_compile()
        if jit_compile:
            prepare_compiled_training(self)
        optimizer = keras.optimizers.get(optimizer)
        if (
            self.backbone.dtype_policy.name == "mixed_float16"
            and kwargs.get("auto_scale_loss", True)
            and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        ):
            # Keras wraps the optimizer only when the task's own policy is
            # float16; a float16 backbone needs the loss scaling as much.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None:
            config = {**config, "backend": keras.backend.backend()}
        return config

    def compile_from_config(self, config):
        """Recompiles a loaded `.keras` model (optimizer state included),
        so that training can continue from the file.

        Optimizer state does not load across backends: a file saved under
        another backend loads without an optimizer, with a warning.
        """
        config = dict(config)
        backend = config.pop("backend", None)
        if backend != keras.backend.backend():
            warnings.warn(
                f"This model was saved under the {backend} backend; its "
                f"optimizer state does not load under "
                f"{keras.backend.backend()}, so it is loaded without an "
                f"optimizer. Call compile() before training it further.",
                stacklevel=2,
            )
            return
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _preprocess(self, images):
        """uint8-scale images in [0, 255] -> float32 in [-1, 1]."""
        return ops.cast(images, "float32") / 127.5 - 1.0

    def _split_batch(self, x, y):
        if isinstance(x, dict):
            return x["images"], x.get("labels", y)
        return x, y

    def call(self, inputs, training=False):
        """The autoencoder pass: uint8-scale images (or a dict with
        `"images"`) -> `{"latents", "reconstructions"}` (float32).

        This is the training graph, so it (and `predict()`) runs the trained
        network `backbone`, not the sampling EMA; `encode` / `decode` run
        the sampling EMA.
        """
        images, _ = self._split_batch(inputs, None)
        latents = self.backbone.encode(self._preprocess(images))
        return {
            "latents": latents,
            "reconstructions": self.backbone.decode(latents),
        }

    def _sample_time(self, latents):
        """Training times `t`, one per example of `latents`, in `(0, 1)`."""
        batch_size = ops.shape(latents)[0]
        if self.time_distribution == "uniform":
            return keras.random.uniform((batch_size,), seed=self.seed_generator)
        normal = keras.random.normal((batch_size,), seed=self.seed_generator)
        return ops.sigmoid(self.time_mean + self.time_std * normal)

    def _sample_noise(self, latents):
        """Diffusion noise `eps` of the latents' shape."""
        return keras.random.normal(ops.shape(latents), seed=self.seed_generator)

    def _sample_label_dropout(self, batch_size):
        """Which labels become the null class, `(B,)` bool."""
        draws = keras.random.uniform((batch_size,), seed=self.seed_generator)
        return draws < self.label_dropout

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        images, labels = self._split_batch(x, y)
        if labels is None:
            raise ValueError(
                "DSDImageGenerator needs class labels: feed (images, labels) "
                'or {"images": ..., "labels": ...}.'
            )
        if y_pred is None:
            y_pred = self(images, training=training)
        clean = self._preprocess(images)
        online = y_pred["latents"]
        reconstruction_loss = ops.mean(
            ops.square(y_pred["reconstructions"] - clean)
        )

        batch_size = ops.shape(online)[0]
        t = self._sample_time(online)
        noise = self._sample_noise(online)
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        if training and self.label_dropout > 0:
            drop = self._sample_label_dropout(batch_size)
            labels = ops.where(drop, self.backbone.null_class, labels)
        prediction = self.backbone.denoise(
            objectives.noisy_latents(online, noise, t), t, labels
        )
        target = None
        if objectives.get(self.objective).uses_target_latent:
            if self.teacher_backbone is not None:
                target = self.teacher_backbone.encode(clean)
            else:
                target = online
        diffusion_loss = objectives.diffusion_loss(
            self.objective, prediction, online, target, noise, t, self.t_min
        )
        loss = reconstruction_loss + self.diffusion_loss_weight * diffusion_loss

        # The latent metrics see the global batch on every device count.
        detached = gather_replicas(ops.stop_gradient(online))
        self.reconstruction_loss_tracker.update_state(reconstruction_loss)
        self.diffusion_loss_tracker.update_state(diffusion_loss)
        self.latent_std_tracker.update_state(latent_std(detached))
        self.latent_rank_tracker.update_state(effective_rank(detached))
        # Under tf.distribute the replicas' gradients are summed.
        return scale_loss_for_replicas(loss)

    def train_step(self, *args):
        # The teacher and the sampling EMA move after the optimizer step, if
        # it changed the weights (`keras_dsd.models.dsd.ema`).
        return train_step_with_updates(
            self,
            super().train_step,
            args,
            before=lambda: ema.optimizer_updates(self.optimizer),
            after=self._update_averages,
        )

    def _update_averages(self, updates_before):
        applied = ops.not_equal(
            ema.optimizer_updates(self.optimizer), updates_before
        )
        averages = []
        if self.teacher_backbone is not None:
            averages.append((self.teacher_backbone, self.teacher_decay))
        if self.ema_backbone is not None:
            averages.append((self.ema_backbone, self.ema_decay))
        ema.update_averages(
            averages, self.backbone, self.ema_step, applied, self.ema_warmup
        )

    def get_metrics_result(self):
        # Logged values are means over the global batch on every backend
        # (multi-process PyTorch: each process's metrics see its shard).
        return mean_over_processes(super().get_metrics_result())

    def fit(self, x=None, y=None, **kwargs):
        """`keras.Model.fit`, after checking the first batch of data.

        Numpy inputs are checked in full; a `tf.data.Dataset`, a
        `keras.utils.PyDataset` or a `torch.utils.data.DataLoader` by its
        first batch, so that a wrong image size, dtype, value range or label
        fails with a clear message instead of inside the compiled step.
        """
        if getattr(self, "optimizer", None) is None:
            raise ValueError(
                "DSDImageGenerator.fit needs an optimizer: call compile() "
                "first (a model built with compile=False, or loaded from a "
                ".keras file saved under another backend, comes without one)."
            )
        validation.check_training_data(
            x,
            y,
            self.backbone.image_size,
            self.backbone.patch_size,
            self.backbone.num_classes,
        )
        if self._ema_step_from_optimizer:
            # A file written before `ema_step` existed: its warm-up counted
            # the optimizer's updates, which its optimizer state still has.
            optimizer = ema.applying_optimizer(self.optimizer)
            accumulation = optimizer.gradient_accumulation_steps or 1
            updates = int(ops.convert_to_numpy(optimizer.iterations))
            self.ema_step.assign(updates // accumulation)
            self._ema_step_from_optimizer = False
        if keras.backend.backend() == "tensorflow" and not self.optimizer.built:
            # Without a strategy, Keras would build the optimizer inside the
            # first traced step, and tf.function then traces the step twice
            # (once while it creates variables). Built here, it traces once:
            # 8 s less before the first step of `dsd_tiny` on a 2-core CPU.
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
        return super().fit(x=x, y=y, **kwargs)

    def load_own_variables(self, store):
        # Files written before the EMA step counter hold no variable of the
        # task itself: keep the counter, and take it from the optimizer's
        # restored update count before training (see `fit`).
        if not list(store.keys()):
            self._ema_step_from_optimizer = True
            return
        super().load_own_variables(store)

    # === Generation ===
    def _inference_function(self, key, fn):
        if key not in self._inference_functions:
            self._inference_functions[key] = compile_inference_function(
                fn, self.inference_backbone.variables
            )
        return self._inference_functions[key]

    def generate_step(
        self,
        noise,
        labels,
        num_steps=32,
        sampler="heun",
        guidance_scale=None,
        time_shift=1.0,
        guidance_interval=None,
        start=0,
        clean_latents=None,
        known_tokens=None,
    ):
        """Starting latents `(B, N, c)` and labels `(B,)` ->
        `{"images", "latents"}`: float32 images in about `[-1, 1]` and the
        sampled latents.

        A pure function of the inference weights and its inputs, suitable
        for compilation. `guidance_scale`, `time_shift` and the bounds of
        `guidance_interval` may be floats or float32 scalar tensors (a
        tensor keeps one compiled function for every value). See `generate`
        for the arguments.

        Image-to-image and inpainting: `noise` holds the latents at the
        grid time `t_start` of step `start` (an int or int32 scalar
        tensor), from which the sampler integrates. With `known_tokens` (a
        bool `(B, N)` tensor), those tokens follow the straight path
        `t * clean_latents + (1 - t) * eps` instead of the network's
        velocity, with the `eps` that puts `noise` on that path at
        `t_start`: at each time the network sees them as the input's
        latents noised to that time, and they end on `clean_latents`.
        """
        network = self.inference_backbone
        timesteps = _time_grid(num_steps, time_shift)
        null = ops.full_like(labels, network.null_class)

        def conditional_velocity(z, t):
            batch_t = ops.full((ops.shape(z)[0],), t)
            prediction = network.denoise(z, batch_t, labels)
            return objectives.velocity_from_prediction(
                self.objective, prediction, z, batch_t, SAMPLING_EPSILON
            )

        def guided_velocity(z, t):
            both = ops.concatenate([z, z], axis=0)
            batch_t = ops.full((ops.shape(both)[0],), t)
            prediction = network.denoise(
                both, batch_t, ops.concatenate([labels, null], axis=0)
            )
            v = objectives.velocity_from_prediction(
                self.objective, prediction, both, batch_t, SAMPLING_EPSILON
            )
            conditional, unconditional = ops.split(v, 2, axis=0)
            return unconditional + guidance_scale * (
                conditional - unconditional
            )

        def network_velocity(z, t):
            if guidance_scale is None:
                return conditional_velocity(z, t)
            if guidance_interval is None:
                return guided_velocity(z, t)
            # The samplers loop with `ops.fori_loop`, so `t` is a traced
            # scalar: `ops.cond` runs one branch per evaluation, and the
            # doubled batch only inside the interval.
            inside = ops.logical_and(
                ops.greater_equal(t, guidance_interval[0]),
                ops.less(t, guidance_interval[1]),
            )
            return ops.cond(
                inside,
                lambda: guided_velocity(z, t),
                lambda: conditional_velocity(z, t),
            )

        velocity = network_velocity
        if known_tokens is not None:
            # z(t) = t * x + (1 - t) * eps through `noise` at t_start, so
            # eps = (noise - t_start * x) / (1 - t_start) and the path's
            # velocity is x - eps. At t_start = 1 no step runs.
            t_start = ops.take(timesteps, start)
            eps = (noise - t_start * clean_latents) / ops.maximum(
                1.0 - t_start, SAMPLING_EPSILON
            )
            path_velocity = clean_latents - eps
            known = ops.expand_dims(known_tokens, -1)

            def velocity(z, t):
                return ops.where(known, path_velocity, network_velocity(z, t))

        latents = samplers.get(sampler)(velocity, noise, timesteps, start)
        if known_tokens is not None:
            latents = ops.where(known, clean_latents, latents)
        return {"images": network.decode(latents), "latents": latents}

    def generate(
        self,
        class_labels,
        num_steps=32,
        sampler="heun",
        seed=None,
        guidance_scale=None,
        time_shift=1.0,
        batch_size=64,
        return_latents=False,
        guidance_interval=None,
        images=None,
        strength=None,
        masks=None,
    ):
        """Generates class-conditional images with the sampling-EMA weights.

        Integrates the probability-flow ODE from Gaussian noise at `t = 0` to
        `t = 1` on a fixed time grid, then decodes with the same network.
        On JAX and TensorFlow, sampling and decoding are one XLA-compiled
        function per batch shape and sampler setting (`guidance_scale`,
        `time_shift`, `guidance_interval` and `strength` are inputs of
        that function, so new values do not compile again); PyTorch runs
        the same loop eagerly.

        With `images`, edits them instead of starting from noise:

        - Image-to-image (SDEdit): the images are encoded, noised along the
          training path `z_t = t * E(x) + (1 - t) * eps` to the grid time
          `t_k`, `k = num_steps - round(strength * num_steps)` (`1 -
          strength` on the uniform grid), and the ODE runs the remaining
          `m = num_steps - k` steps of the `num_steps` grid with
          `class_labels`, which may differ from the images' classes. That
          costs `m` network evaluations with Euler and `2 * m - 1` with
          Heun (none at `m = 0`): about `strength` times those of
          generation. `strength=0` returns `decode(encode(images))`;
          `strength=1` is generation from the same noise as without
          `images`.
        - Inpainting (`masks`, True = regenerate): the latent tokens whose
          patch holds no masked pixel follow the input's latents noised to
          each time (token replacement, as RePaint does in pixel space),
          the others are generated; every pixel outside the mask is
          returned unchanged from `images`.

        Args:
            class_labels: int or sequence of ints in `[0, num_classes)`: one
                image per label.
            num_steps: int. ODE steps. Network evaluations (NFE): `num_steps`
                for Euler, `2 * num_steps - 1` for Heun
                (`keras_dsd.samplers.num_function_evaluations`). Defaults to
                `32`.
            sampler: string. `"heun"` or `"euler"`. Defaults to `"heun"`.
            seed: int or `None`. The initial noise is drawn with numpy from
                this seed, so a seed gives the same images on every backend
                (up to floating-point differences).
            guidance_scale: float or `None`. Classifier-free guidance scale;
                `None` (the default, as in the paper's results) runs no
                guidance. Meaningful only for models trained with
                `label_dropout > 0`.
            time_shift: float. Time-grid shift; `1` is uniform, larger
                values spend more steps at high noise. Defaults to `1.0`.
            batch_size: int. Images per compiled call. Defaults to `64`.
            return_latents: bool. Also return the sampled latents.
            guidance_interval: pair `(t_low, t_high)` with
                `0 <= t_low < t_high <= 1`, or `None`. With
                `guidance_scale`, apply guidance only to network evaluations
                at times `t_low <= t < t_high` (`t = 0` is noise, `t = 1`
                clean; compared in float32) and the plain conditional
                velocity, one batch instead of a doubled one, elsewhere.
                Guidance at high noise (small `t`) mostly costs diversity
                (Kynkäänniemi et al., 2024,
                https://arxiv.org/abs/2404.07724). `None` (the default)
                guides every evaluation. Requires `guidance_scale`.
            images: `None` or uint8-scale images `(len(class_labels), H, W,
                3)` of the model's size, to edit.
            strength: float in `[0, 1]` or `None`: how much of the grid to
                re-run on `images` (see above). `None` is `1.0` with
                `masks` and `0.8` without. Requires `images`.
            masks: `None` or a bool array `(len(class_labels), H, W)`:
                the pixels of `images` to regenerate. Requires `images`.

        Returns:
            uint8 numpy array `(len(class_labels), H, W, 3)`, and the float32
            latents if `return_latents`.

        Example:
        ```python
        # A 3 redrawn as an 8, and the lower half of a digit regenerated.
        eights = model.generate([8], images=three, strength=0.6, seed=0)
        masks = np.zeros((1, 32, 32), bool)
        masks[:, 16:] = True
        completed = model.generate([3], images=three, masks=masks, seed=0)
        ```
        """
        network = self.inference_backbone
        labels = validation.check_labels(class_labels, network.num_classes)
        validation.check_not_empty(labels, "class_labels")
        num_steps = samplers.check_num_steps(num_steps)
        samplers.check_sampler(sampler)
        samplers.check_time_shift(time_shift)
        batch_size = validation.check_positive_int(batch_size, "batch_size")
        if guidance_scale is not None and not np.isfinite(guidance_scale):
            raise ValueError(
                f"`guidance_scale` must be a finite float or None, got "
                f"{guidance_scale!r}."
            )
        if guidance_interval is not None:
            guidance_interval = samplers.check_guidance_interval(
                guidance_interval, guidance_scale
            )
        if images is None:
            for name, value in (("strength", strength), ("masks", masks)):
                if value is not None:
                    raise ValueError(
                        f"`{name}` needs `images` to edit; got {name} "
                        "without images=."
                    )
        else:
            images, strength, masks = _check_edit_inputs(
                images, strength, masks, len(labels), network
            )
        noise = (
            np.random.default_rng(seed)
            .standard_normal((len(labels), *network.latent_shape))
            .astype("float32")
        )
        scalars = (
            np.float32(0.0 if guidance_scale is None else guidance_scale),
            np.float32(time_shift),
            np.array(guidance_interval or (0.0, 1.0), "float32"),
        )
        options = (
            num_steps,
            sampler,
            guidance_scale is not None,
            guidance_interval is not None,
        )
        if images is None:
            step = self._sampling_function("generate", options)
            images_out, latents = _batched(
                step, (noise, labels), batch_size, constants=scalars
            )
            images_out = _to_uint8(images_out)
            return (images_out, latents) if return_latents else images_out

        clean = self.encode(images, batch_size=batch_size)
        steps_run = int(np.floor(strength * num_steps + 0.5))
        start = num_steps - steps_run
        t_start = samplers.time_grid(num_steps, time_shift)[start]
        starting = t_start * clean + (1.0 - t_start) * noise
        known = _known_tokens(masks, network, len(labels))
        step = self._sampling_function("edit", options)
        images_out, latents = _batched(
            step,
            (starting.astype("float32"), labels, clean, known),
            batch_size,
            constants=(np.int32(start), *scalars),
        )
        images_out = _to_uint8(images_out)
        if masks is not None:
            original = np.round(images).astype("uint8")
            images_out = np.where(masks[..., None], images_out, original)
        return (images_out, latents) if return_latents else images_out

    def _sampling_function(self, kind, options):
        """The compiled sampling function for `kind` (`"generate"` or
        `"edit"`) and the options that change its program: step count,
        sampler, and whether guidance and a guidance interval are on. The
        scalar settings are its inputs."""
        num_steps, sampler, guided, interval = options

        def sample(noise, labels, start, scale, shift, bounds, **edit):
            outputs = self.generate_step(
                noise,
                labels,
                num_steps,
                sampler,
                guidance_scale=scale if guided else None,
                time_shift=shift,
                guidance_interval=bounds if interval else None,
                start=start,
                **edit,
            )
            return outputs["images"], outputs["latents"]

        if kind == "generate":

            def step(noise, labels, scale, shift, bounds):
                return sample(noise, labels, 0, scale, shift, bounds)

        else:

            def step(noise, labels, clean, known, start, scale, shift, bounds):
                return sample(
                    noise,
                    labels,
                    start,
                    scale,
                    shift,
                    bounds,
                    clean_latents=clean,
                    known_tokens=known,
                )

        return self._inference_function((kind, *options), step)

    def interpolate(
        self,
        images_a,
        images_b,
        class_labels=None,
        num=8,
        strength=0.0,
        num_steps=32,
        sampler="heun",
        seed=None,
        batch_size=64,
    ):
        """Decodes the path between the latents of two batches of images.

        Each pair `(images_a[i], images_b[i])` is encoded; both latents are
        noised to the grid time of `strength` (as in `generate`'s
        image-to-image, with one noise draw shared by the pair),
        interpolated spherically over the whole latent at `num` evenly
        spaced fractions, then denoised from that time with
        `class_labels[i]` and decoded. `strength=0` decodes the spherical
        interpolation of the clean latents, with no network evaluation
        besides encoding and decoding; the ends are then
        `decode(encode(images_a))` and `decode(encode(images_b))`.

        Args:
            images_a: uint8-scale images `(B, H, W, 3)` of the model's size.
            images_b: images like `images_a`.
            class_labels: `None` or ints `(B,)`: the class of each path's
                denoising. Needed when `strength > 0`.
            num: int >= 2. Images per path, ends included. Defaults to `8`.
            strength: float in `[0, 1]`. Defaults to `0.0`.
            num_steps, sampler, seed, batch_size: as in `generate`.

        Returns:
            uint8 numpy array `(B, num, H, W, 3)`.
        """
        network = self.inference_backbone
        images_a = _check_model_images(images_a, network, "images_a")
        images_b = _check_model_images(images_b, network, "images_b")
        if images_b.shape != images_a.shape:
            raise ValueError(
                f"`images_b` must have the shape of `images_a`, "
                f"{images_a.shape}; got {images_b.shape}."
            )
        num = validation.check_positive_int(num, "num")
        if num < 2:
            raise ValueError(f"`num` must be an int >= 2, got num={num!r}.")
        strength = _check_strength(strength)
        pairs = len(images_a)
        if class_labels is None:
            if strength > 0:
                raise ValueError(
                    f"`class_labels` is needed to denoise the path at "
                    f"strength={strength!r}; got class_labels=None."
                )
            class_labels = np.zeros((pairs,), "int32")
        labels = validation.check_labels(class_labels, network.num_classes)
        if len(labels) != pairs:
            raise ValueError(
                f"`class_labels` must hold one label per pair ({pairs}); got "
                f"{len(labels)}."
            )
        num_steps = samplers.check_num_steps(num_steps)
        samplers.check_sampler(sampler)
        batch_size = validation.check_positive_int(batch_size, "batch_size")
        steps_run = int(np.floor(strength * num_steps + 0.5))
        t_start = samplers.time_grid(num_steps)[num_steps - steps_run]
        noise = (
            np.random.default_rng(seed)
            .standard_normal((pairs, *network.latent_shape))
            .astype("float32")
        )
        ends = [
            t_start * self.encode(x, batch_size=batch_size)
            + (1.0 - t_start) * noise
            for x in (images_a, images_b)
        ]
        fractions = np.linspace(0.0, 1.0, num)
        path = _slerp(ends[0], ends[1], fractions)  # (B, num, N, c)
        flat = path.reshape((pairs * num, *network.latent_shape))
        if steps_run == 0:
            decoded = self.decode(flat, batch_size=batch_size)
        else:
            decoded = self._denoise_from(
                flat,
                np.repeat(labels, num),
                num_steps,
                sampler,
                steps_run,
                batch_size,
            )
        return decoded.reshape((pairs, num, *decoded.shape[1:]))

    def _denoise_from(
        self, latents, labels, num_steps, sampler, steps_run, batch_size
    ):
        """Runs the last `steps_run` steps of the uniform grid from
        `latents` and decodes: uint8 images."""
        options = (num_steps, sampler, False, False)
        step = self._sampling_function("edit", options)
        known = np.zeros(latents.shape[:2], bool)
        images, _ = _batched(
            step,
            (latents.astype("float32"), labels, latents, known),
            batch_size,
            constants=(
                np.int32(num_steps - steps_run),
                np.float32(0.0),
                np.float32(1.0),
                np.array((0.0, 1.0), "float32"),
            ),
        )
        return _to_uint8(images)

    def encode(self, images, batch_size=64):
        """uint8 images `(B, H, W, 3)` -> float32 latents `(B, N, c)`."""
        network = self.inference_backbone
        images = validation.check_images(
            images, network.image_size, network.patch_size
        )
        validation.check_not_empty(images, "images")
        fn = self._inference_function(
            "encode", lambda x: network.encode(self._preprocess(x))
        )
        return _batched(fn, (images,), batch_size)

    def decode(self, latents, batch_size=64):
        """Latents `(B, N, c)` -> uint8 images `(B, H, W, 3)`."""
        network = self.inference_backbone
        latents = validation.check_latents(latents, network.latent_shape)
        validation.check_not_empty(latents, "latents")
        fn = self._inference_function("decode", network.decode)
        return _to_uint8(_batched(fn, (latents,), batch_size))

    # === Saving ===
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "objective": self.objective,
            "teacher": self.teacher,
            "teacher_decay": self.teacher_decay,
            "ema_decay": self.ema_decay,
            "ema_warmup": self.ema_warmup,
            "diffusion_loss_weight": self.diffusion_loss_weight,
            "t_min": self.t_min,
            "time_distribution": self.time_distribution,
            "time_mean": self.time_mean,
            "time_std": self.time_std,
            "label_dropout": self.label_dropout,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["backbone"], dict):
            config["backbone"] = keras.saving.deserialize_keras_object(
                config["backbone"]
            )
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Builds the task from a built-in preset name or a saved preset.

        A built-in name (`"dsd_tiny"`, `"dsd_s"`, `"dsd_m"`, `"dsd_b"`) gives
        a fresh network. Any other handle goes through keras-hub's loader:
        a local folder, `"kaggle://..."`, `"hf://..."` or `"gs://..."`. A
        task preset restores the config, the trained network, the teacher,
        the sampling EMA and the task's own state (so that training
        continues the EMA where it stopped); a backbone-only preset gives a
        new task around its network. The model comes compiled with the
        defaults of `compile()` (optimizer state is not part of a preset).
        `**kwargs` override task arguments, e.g. `objective="naive"`.

        Example:
        ```python
        model = keras_dsd.models.DSDImageGenerator.from_preset(
            "hf://user/dsd-b-imagenet"
        )
        ```
        """
        return preset_utils.load_task(
            cls, DSDBackbone, preset, load_weights, **kwargs
        )

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """Writes a preset that stores each network once.

        `config.json` + `model.weights.h5` are the backbone to generate
        with (the sampling EMA when there is one), so that
        `DSDBackbone.from_preset(preset_dir)` and keras-hub's
        `Backbone.from_preset` get the generation weights; `task.json` +
        `task.weights.h5` add everything else needed to continue training
        (see `keras_dsd.models.preset_utils`). Weights above
        `max_shard_size` GB are sharded. Refuses a folder that holds
        another model's preset. Share it with
        `keras_hub.upload_preset("hf://user/name", preset_dir)`.
        """
        preset_utils.save_task(self, preset_dir, max_shard_size)

    def quantize(self, mode, **kwargs):
        """`keras.Model.quantize` (e.g. `"int8"`), then forgets the compiled
        `generate` / `encode` / `decode` functions, which hold the float
        weights."""
        with warnings.catch_warnings():
            # Keras warns once per layer without weights to quantize.
            warnings.filterwarnings(
                "ignore", message=".*does not have a `quantize` method"
            )
            super().quantize(mode, **kwargs)
        self._inference_functions = {}


class _ReplicaSeedGenerator(keras.random.SeedGenerator):
    """A `SeedGenerator` whose draws differ across data-parallel replicas.

    TensorFlow's `MirroredStrategy` and multi-process PyTorch run the step
    once per replica on a slice of the global batch, each with the same
    generator state: without an offset every replica would draw the same
    times and noise. JAX runs the global batch as one program and needs
    none.
    """

    def next(self, ordered=True):
        seed = super().next(ordered)
        replica = replica_id()
        if replica is None:
            return seed
        offset = ops.stack([ops.cast(replica, "int32") * 1_000_003, 0])
        return seed + ops.cast(offset, seed.dtype)


def _time_grid(num_steps, shift):
    """`samplers.time_grid` as a tensor when `shift` is one, so that the
    shift is an input of the compiled function rather than a constant."""
    if isinstance(shift, (int, float, np.integer, np.floating)):
        return samplers.time_grid(num_steps, shift)
    s = np.linspace(0.0, 1.0, num_steps + 1).astype("float32")
    shift = ops.cast(shift, "float32")
    return s / (1.0 + (shift - 1.0) * (1.0 - s))


def _check_strength(strength):
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(strength, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"`strength` must be a finite float in [0, 1], got "
            f"strength={strength!r}."
        )
    return value


def _check_model_images(images, network, name):
    images = validation.check_images(
        images, network.image_size, network.patch_size, name=name
    )
    validation.check_not_empty(images, name)
    return images


def _check_edit_inputs(images, strength, masks, num_labels, network):
    """Validates `generate`'s editing inputs; returns them as numpy
    (`strength` as a float with its default filled in)."""
    images = _check_model_images(images, network, "images")
    if len(images) != num_labels:
        raise ValueError(
            f"`images` must hold one image per class label ({num_labels}); "
            f"got {len(images)}."
        )
    if masks is not None:
        masks = validation.to_numpy(masks, "masks")
        expected = images.shape[:3]
        if masks.dtype != bool or masks.shape != expected:
            raise ValueError(
                f"`masks` must be a bool array of shape {expected} (True = "
                f"regenerate); got shape {masks.shape} and dtype "
                f"{masks.dtype}."
            )
    if strength is None:
        strength = 1.0 if masks is not None else 0.8
    return images, _check_strength(strength), masks


def _known_tokens(masks, network, batch):
    """Bool `(B, N)`: the tokens whose patch holds no masked pixel (all
    False without masks, so that both share one compiled function), in the
    row-major order of `PatchEmbedding`."""
    if masks is None:
        return np.zeros((batch, network.latent_shape[0]), bool)
    patch_size = network.patch_size
    b, h, w = masks.shape
    rows, cols = h // patch_size, w // patch_size
    touched = masks.reshape(b, rows, patch_size, cols, patch_size).any((2, 4))
    return ~touched.reshape(b, rows * cols)


def _slerp(a, b, fractions):
    """Spherical interpolation of each pair `(a[i], b[i])` (flattened) at
    `fractions`: `(B, ...)` x2 -> `(B, len(fractions), ...)`; linear where
    the two are (anti)parallel to float64 precision."""
    a64 = a.reshape(len(a), -1).astype("float64")
    b64 = b.reshape(len(b), -1).astype("float64")
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    cosine = np.clip(
        np.sum(a64 * b64, axis=1) / np.maximum(norms, 1e-30), -1, 1
    )
    omega = np.arccos(cosine)[:, None]
    f = np.asarray(fractions, "float64")[None, :]
    sin_omega = np.sin(omega)
    linear = sin_omega < 1e-6
    safe = np.where(linear, 1.0, sin_omega)
    wa = np.where(linear, 1.0 - f, np.sin((1.0 - f) * omega) / safe)
    wb = np.where(linear, f, np.sin(f * omega) / safe)
    path = wa[..., None] * a64[:, None] + wb[..., None] * b64[:, None]
    return path.reshape((len(a), len(f[0]), *a.shape[1:])).astype("float32")


def _to_uint8(images):
    images = np.clip(np.asarray(images, "float32"), -1.0, 1.0)
    return np.round((images + 1.0) * 127.5).astype("uint8")


def _batched(fn, arrays, batch_size, constants=()):
    """Runs `fn(*batch, *constants)` over fixed-size batches of `arrays`
    (the last one padded), so that a compiled function sees a single
    shape, and concatenates the outputs."""
    total = len(arrays[0])
    if total == 0:
        raise ValueError("Nothing to process: got an empty batch.")
    batch_size = min(batch_size, total)
    outputs = []
    for start in range(0, total, batch_size):
        chunk = [a[start : start + batch_size] for a in arrays]
        real = len(chunk[0])
        if real < batch_size:
            chunk = [
                np.concatenate([c, np.repeat(c[-1:], batch_size - real, 0)])
                for c in chunk
            ]
        result = fn(*chunk, *constants)
        outputs.append(keras.tree.map_structure(lambda r: r[:real], result))
    if isinstance(outputs[0], (tuple, list)):
        return tuple(
            np.concatenate([o[i] for o in outputs])
            for i in range(len(outputs[0]))
        )
    return np.concatenate(outputs)
