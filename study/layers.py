"""Custom Keras layers shared by the search spaces and by model loading."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="pneumoscope")
class GrayToRGB(keras.layers.Layer):
    """Repeat a grayscale [0, 1] image to 3 channels in [0, 255], as ImageNet backbones expect."""

    def call(self, x):
        return keras.ops.repeat(x, 3, axis=-1) * 255.0

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)
