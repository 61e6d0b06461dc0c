"""ResNet transfer-learning search space, and the base shared with the EfficientNet family.

Why it looks like this
----------------------
* The ImageNet backbone is only ever built from a local weights file resolved by
  :func:`study.models.weights.resolve_imagenet_weights`; without one the hypermodel refuses to
  exist (:class:`~study.models.weights.WeightsUnavailableError`), so a "resnet" result is always a
  pretrained ResNet, never a random-init one under that name.
* The model takes the project's input format (float32 ``(S, S, 1)`` in [0, 1]) and does
  grey -> RGB x255 and the backbone's own ``preprocess_input`` as serialisable layers inside
  the graph, so the exported model needs no outside preprocessing.
* Every BatchNorm layer of the backbone stays frozen (``trainable=False``), also in the
  blocks being fine-tuned, so it runs in inference mode with its ImageNet statistics (Keras'
  transfer-learning advice; batch statistics of 32 X-rays are a poor replacement). In Keras
  3 the ``training=False`` in ``backbone(x, training=False)`` is not enough on its own: a
  functional model hands its own ``training`` flag to nested models during ``fit``. The
  frozen flag is what keeps BatchNorm in inference mode (tested), and stochastic-depth
  dropout inside the backbone is switched off (``rate=0``) so frozen features are
  deterministic.
* Searched: how many top blocks to fine-tune (0 = frozen backbone, head only), head size,
  dropout, optimiser, head learning rate and the backbone learning-rate multiplier (applied
  per variable by :class:`study.models.layers.LayerwiseAdam`).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import keras
import keras_tuner as kt

from search_spaces.inputs import InputSpace, declare_inputs
from study.models.layers import GrayToRGB, LayerwiseAdam, LayerwiseAdamW
from study.models.metrics import compile_metrics
from study.models.weights import WeightsSource, WeightsUnavailableError, keras_loadable

# 10 blocks reaches half-way down a ResNet50 or EfficientNet: deeper where time allows.
FINE_TUNE_BLOCKS = [0, 1, 3, 6, 10]
HEAD_PREFIX = "head_"


def set_trainable_top_blocks(
    backbone: keras.Model, n: int, block_pattern: str, train_batchnorm: bool = False
) -> list[str]:
    """Freeze all of ``backbone`` but its top ``n`` blocks (and the layers above them).

    Blocks are the distinct first groups of ``block_pattern`` matched against layer names, in
    layer order. ``n=0`` freezes everything; ``n >= number of blocks`` also unfreezes the stem.
    BatchNorm layers stay frozen (inference mode, ImageNet statistics) unless
    ``train_batchnorm``. Returns the unfrozen block names.
    """
    pattern = re.compile(block_pattern)
    blocks: list[str] = []
    for layer in backbone.layers:
        m = pattern.match(layer.name)
        if m and m.group(1) not in blocks:
            blocks.append(m.group(1))
    if not blocks:
        raise ValueError(f"no layer of {backbone.name} matches {block_pattern!r}")
    if n <= 0:
        backbone.trainable = False
        return []
    backbone.trainable = True
    top = set(blocks[-n:])
    stem_trainable = n >= len(blocks)
    seen_block = False
    for layer in backbone.layers:
        m = pattern.match(layer.name)
        if m:
            seen_block = True
            layer.trainable = m.group(1) in top
        else:
            # Before the first block: the stem; after the last: top conv/BN, always tuned.
            layer.trainable = stem_trainable if not seen_block else True
        if not train_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return [b for b in blocks if b in top]


class TransferHyperModel(kt.HyperModel):
    """ImageNet backbone + small head; subclasses say how to build the backbone."""

    family: ClassVar[str] = ""
    needs_weights: ClassVar[bool] = True
    block_pattern: ClassVar[str] = ""

    def __init__(
        self,
        image_size: int,
        seed: int,
        weights: WeightsSource | None,
        precision: str | None = None,
        inputs: InputSpace | None = None,
    ) -> None:
        super().__init__(name=self.family, tunable=True)
        if weights is None or not weights.available:
            why = weights.reason if weights is not None else "no WeightsSource given"
            raise WeightsUnavailableError(f"{self.family}: ImageNet weights unavailable: {why}")
        if weights.family != self.family:
            raise ValueError(f"{self.family} hypermodel got weights for {weights.family}")
        self.image_size = int(image_size)
        self.inputs = inputs or InputSpace.fixed(image_size)
        self.seed = int(seed)
        self.weights = weights
        self.precision = precision

    # ------------------------------------------------------------------ subclass hooks
    def make_backbone(self, input_shape: tuple[int, int, int]) -> keras.Model:
        """The headless backbone with the resolved weights loaded (feature map output)."""
        raise NotImplementedError

    def make_preprocess(self) -> keras.layers.Layer | None:
        """RGB [0, 255] -> what the backbone was trained on, as a serialisable layer."""
        raise NotImplementedError

    # ------------------------------------------------------------------ hyperparameters
    def declare(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """Register (or read) every hyperparameter; returns the values used for this build."""
        v: dict[str, Any] = {
            # Fixed values record in every trial which weights were really used.
            "weights_kind": hp.Fixed("weights_kind", self.weights.kind),
            "backbone": hp.Fixed("backbone", self.weights.architecture),
            "fine_tune_blocks": hp.Choice("fine_tune_blocks", FINE_TUNE_BLOCKS),
            "head_units": hp.Choice("head_units", [0, 128, 256]),
            "dropout": hp.Float("dropout", 0.0, 0.5, step=0.1),
            "optimizer": hp.Choice("optimizer", ["adam", "adamw"]),
            "learning_rate": hp.Float("learning_rate", 1e-4, 3e-3, sampling="log"),
        }
        with hp.conditional_scope("fine_tune_blocks", [b for b in FINE_TUNE_BLOCKS if b]):
            v["fine_tune_lr_mult"] = hp.Choice("fine_tune_lr_mult", [0.01, 0.03, 0.1, 0.3])
        with hp.conditional_scope("optimizer", ["adamw"]):
            v["weight_decay"] = hp.Float("weight_decay", 1e-5, 1e-2, sampling="log")
        return v

    def describe(self, hp: kt.HyperParameters) -> str:
        """One line of the key choices, for progress output."""
        v = hp.values
        k = v.get("fine_tune_blocks", 0)
        tune = f"fine-tune top {k} (lr x{v.get('fine_tune_lr_mult')})" if k else "frozen"
        lr = v.get("learning_rate")
        lr_s = f"{lr:.1e}" if isinstance(lr, float) else "?"
        return (
            f"{v.get('backbone')}[{v.get('weights_kind')}] {tune} "
            f"head={v.get('head_units')} drop={v.get('dropout', 0):.1f} "
            f"{v.get('optimizer')} lr={lr_s}"
        )

    # ------------------------------------------------------------------ model
    def build(self, hp: kt.HyperParameters) -> keras.Model:
        if self.precision:
            # Keras-Tuner clears the Keras session (and with it the global dtype policy)
            # right before each build, so this family's precision is set here.
            keras.mixed_precision.set_global_policy(self.precision)
        keras.utils.set_random_seed(self.seed)
        s = declare_inputs(hp, self.inputs).image_size
        v = self.declare(hp)
        inputs = keras.Input((s, s, 1), name="image", dtype="float32")
        # Preprocessing in float32 even under mixed_bfloat16: it is cheap and exact.
        x = GrayToRGB(name="gray_to_rgb", dtype="float32")(inputs)
        pre = self.make_preprocess()
        if pre is not None:
            x = pre(x)
        backbone = self.make_backbone((s, s, 3))
        set_trainable_top_blocks(backbone, v["fine_tune_blocks"], self.block_pattern)
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0  # see module docstring: frozen features stay deterministic
        x = backbone(x, training=False)
        x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(x)
        if v["dropout"] > 0:
            x = keras.layers.Dropout(v["dropout"], name=f"{HEAD_PREFIX}dropout")(x)
        if v["head_units"]:
            x = keras.layers.Dense(v["head_units"], activation="relu", name=f"{HEAD_PREFIX}dense")(
                x
            )
            if v["dropout"] > 0:
                x = keras.layers.Dropout(v["dropout"], name=f"{HEAD_PREFIX}dropout2")(x)
        outputs = keras.layers.Dense(
            1, activation="sigmoid", dtype="float32", name=f"{HEAD_PREFIX}out"
        )(x)
        tag = re.sub(r"[^a-z0-9]+", "_", f"{self.weights.architecture}_{self.weights.kind}".lower())
        model = keras.Model(inputs, outputs, name=f"{self.family}_{tag}")
        # Read by the runner (winner.json); also in hp as the fixed "weights_kind".
        model.weights_kind = self.weights.kind
        model.weights_path = str(self.weights.path)
        model.backbone_name = self.weights.architecture
        model.compile(
            optimizer=_optimizer(v),
            loss=keras.losses.BinaryCrossentropy(),
            metrics=compile_metrics(),
        )
        return model


def _optimizer(v: dict[str, Any]) -> keras.optimizers.Optimizer:
    """Head at ``learning_rate``; unfrozen backbone blocks at ``learning_rate * mult``."""
    mult = v.get("fine_tune_lr_mult")
    mult = 1.0 if mult is None else float(mult)  # None: frozen backbone, nothing to scale
    if v["optimizer"] == "adamw":
        return LayerwiseAdamW(
            learning_rate=v["learning_rate"],
            weight_decay=v["weight_decay"],
            backbone_lr_multiplier=mult,
            head_prefix=HEAD_PREFIX,
        )
    return LayerwiseAdam(
        learning_rate=v["learning_rate"], backbone_lr_multiplier=mult, head_prefix=HEAD_PREFIX
    )


class ResNetHyperModel(TransferHyperModel):
    """keras.applications ResNet50V2 (preferred) or ResNet50, from a local notop file."""

    family = "resnet"
    block_pattern = r"^(conv\d_block\d+)_"

    def make_backbone(self, input_shape: tuple[int, int, int]) -> keras.Model:
        arch = self.weights.architecture
        ctor = {
            "ResNet50V2": keras.applications.ResNet50V2,
            "ResNet50": keras.applications.ResNet50,
        }.get(arch)
        if ctor is None:
            raise ValueError(f"resnet family cannot use {arch} weights")
        # A path (not "imagenet") makes Keras load the file directly: no download attempt.
        with keras_loadable(self.weights.path) as path:
            return ctor(include_top=False, weights=str(path), input_shape=input_shape)

    def make_preprocess(self) -> keras.layers.Layer:
        if self.weights.architecture == "ResNet50V2":
            # resnet_v2.preprocess_input ("tf" mode): x / 127.5 - 1
            return keras.layers.Rescaling(
                1.0 / 127.5, offset=-1.0, name="resnet_preprocess", dtype="float32"
            )
        # resnet50.preprocess_input ("caffe" mode): RGB->BGR, minus the ImageNet BGR means.
        # The three channels are the same grey image, so the flip is the identity.
        return keras.layers.Normalization(
            mean=[103.939, 116.779, 123.68],
            variance=[1.0, 1.0, 1.0],
            name="resnet_preprocess",
            dtype="float32",
        )
