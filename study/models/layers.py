"""Custom Keras objects (layers, optimisers) shared by the search spaces and model loading.

Everything a saved ``winner.keras`` may reference is registered here, so
`import study.models.layers` before ``keras.saving.load_model`` is enough, without Keras-Tuner.
"""

from __future__ import annotations

import keras

from study import keras_compat


@keras.saving.register_keras_serializable(package="pneumoscope")
class GrayToRGB(keras.layers.Layer):
    """Repeat a grayscale [0, 1] image to 3 channels in [0, 255], as ImageNet backbones expect."""

    def call(self, x):
        return keras.ops.repeat(x, 3, axis=-1) * 255.0

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


@keras.saving.register_keras_serializable(package="pneumoscope")
class SpaceToDepth(keras.layers.Layer):
    """Fold each ``block x block`` patch into channels: a free, lossless early downsample.

    Why: on two CPU cores convolutions at full resolution dominate the cost; moving pixels
    into channels lets the first convolution already run at 1/block the resolution.
    """

    def __init__(self, block_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def call(self, x):
        b = self.block_size
        _, h, w, c = x.shape
        x = keras.ops.reshape(x, (-1, h // b, b, w // b, b, c))
        x = keras.ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return keras.ops.reshape(x, (-1, h // b, w // b, b * b * c))

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        b = self.block_size
        return (n, None if h is None else h // b, None if w is None else w // b, c * b * b)

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


@keras.saving.register_keras_serializable(package="pneumoscope")
class MeanProbability(keras.layers.Layer):
    """Average of several (N, 1) probabilities, in float32: the output of an ensemble.

    Its presence marks a model as an ensemble (see study.select.ensemble.ensemble_members),
    so Grad-CAM knows to combine its members' maps.
    """

    def __init__(self, **kwargs):
        kwargs["dtype"] = "float32"  # bfloat16 members are averaged in float32
        super().__init__(**kwargs)

    def call(self, inputs):
        probs = [keras.ops.cast(x, "float32") for x in inputs]
        return keras.ops.mean(keras.ops.stack(probs, axis=0), axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


class _LayerwiseLR:
    """Mixin: variables outside the head train at ``learning_rate * backbone_lr_multiplier``.

    Why: fine-tuning the top blocks of an ImageNet backbone next to a freshly initialised head
    needs a much smaller step for the pretrained weights (else the first noisy head gradients
    wreck them), while the head wants a normal one. Keras 3 has no per-variable learning
    rate, so the multiplier is applied in ``update_step``. A variable belongs to the head when
    its path (the layer name) starts with ``head_prefix``.
    """

    def __init__(self, backbone_lr_multiplier: float = 1.0, head_prefix: str = "head_", **kw):
        super().__init__(**kw)
        self.backbone_lr_multiplier = float(backbone_lr_multiplier)
        self.head_prefix = str(head_prefix)
        self._lr_scales: list[float] = []

    def lr_scale_for(self, path: str) -> float:
        return 1.0 if path.startswith(self.head_prefix) else self.backbone_lr_multiplier

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._lr_scales = [self.lr_scale_for(v.path) for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        scale = self._lr_scales[keras_compat.optimizer_variable_index(self, variable)]
        if scale != 1.0:
            learning_rate = learning_rate * scale
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {
            **super().get_config(),
            "backbone_lr_multiplier": self.backbone_lr_multiplier,
            "head_prefix": self.head_prefix,
        }


@keras.saving.register_keras_serializable(package="pneumoscope")
class LayerwiseAdam(_LayerwiseLR, keras.optimizers.Adam):
    """Adam with a learning-rate multiplier for non-head (backbone) variables."""


@keras.saving.register_keras_serializable(package="pneumoscope")
class LayerwiseAdamW(_LayerwiseLR, keras.optimizers.AdamW):
    """AdamW with a learning-rate multiplier for non-head (backbone) variables."""


# Registers the metrics too, so that importing this module is all a loader needs
# before keras.saving.load_model(..., compile=True).
from study.models import metrics as _metrics  # noqa: E402, F401
