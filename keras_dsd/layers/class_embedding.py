import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dsd")
class ClassEmbedding(keras.layers.Layer):
    """Class-label table with one extra "null" row for classifier-free guidance.

    Labels `0 .. num_classes - 1` are the real classes; label `num_classes`
    (`layer.null_class`) is the unconditional token used when labels are
    dropped during training and for the unconditional branch of guidance.

    Args:
        num_classes: int. Number of real classes.
        hidden_dim: int. Output width.

    Example:
    >>> layer = keras_dsd.layers.ClassEmbedding(num_classes=10, hidden_dim=32)
    >>> layer(np.array([0, 9, layer.null_class])).shape
    (3, 32)
    """

    def __init__(self, num_classes, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim

    @property
    def null_class(self):
        return self.num_classes

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.num_classes + 1, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="embeddings",
        )

    def call(self, labels):
        return ops.take(self.embeddings, ops.cast(labels, "int32"), axis=0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.hidden_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "hidden_dim": self.hidden_dim,
        }


@keras.saving.register_keras_serializable(package="keras_dsd")
class RoleEmbedding(keras.layers.Layer):
    """One learned vector per role of the shared trunk (encode/decode/denoise).

    Called with a batch of tokens and a Python int role, it returns the role's
    vector broadcast to `(B, hidden_dim)`, the conditioning the adaLN blocks
    read.

    Args:
        hidden_dim: int. Output width.
        num_roles: int. Number of roles. Defaults to `3`.
    """

    def __init__(self, hidden_dim, num_roles=3, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_roles = num_roles

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.num_roles, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="embeddings",
        )

    def call(self, tokens, role=0):
        if not 0 <= role < self.num_roles:
            raise ValueError(
                f"RoleEmbedding: role={role} is outside [0, {self.num_roles})."
            )
        vector = ops.cast(self.embeddings[role], tokens.dtype)
        return vector[None, :] + ops.zeros_like(tokens[:, 0, :1])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.hidden_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_roles": self.num_roles,
        }
