"""Search space of a small CNN trained from scratch: the no-ImageNet baseline.

Why this shape: on two CPU cores the cost of a CNN is dominated by its full-resolution
layers, so every candidate starts with a stem that downsamples by 4 at once (a strided 5x5
or 7x7 convolution plus pooling, or a 4x4 space-to-depth fold). After that the tuner chooses
depth (stages, blocks per stage), width, kernel size, plain vs residual blocks, how stages
downsample, the head (global average/max pooling or flatten, optional dense layer), dropout,
optimiser and learning rate.
"""

from __future__ import annotations

from typing import Any

import keras
import keras_tuner as kt

from search_spaces.inputs import InputSpace, declare_inputs
from study.models.layers import SpaceToDepth
from study.models.metrics import compile_metrics
from study.models.weights import WeightsSource

MAX_FILTERS = 256


class CustomCNNHyperModel(kt.HyperModel):
    """From-scratch CNN; ``weights`` is accepted for a uniform interface and ignored."""

    family = "custom_cnn"
    needs_weights = False

    def __init__(
        self,
        image_size: int,
        seed: int,
        weights: WeightsSource | None = None,
        precision: str | None = None,
        inputs: InputSpace | None = None,
    ) -> None:
        super().__init__(name=self.family, tunable=True)
        self.image_size = int(image_size)
        self.inputs = inputs or InputSpace.fixed(image_size)
        self.seed = int(seed)
        self.weights = weights  # ignored: trained from random init by design
        self.precision = precision

    # ------------------------------------------------------------------ hyperparameters
    def declare(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """Register (or read) every hyperparameter; returns the values used for this build."""
        v: dict[str, Any] = {
            "stem": hp.Choice("stem", ["conv5_s2_pool", "conv7_s2_pool", "space_to_depth4"]),
            "stages": hp.Int("stages", 2, 4),
            "blocks_per_stage": hp.Int("blocks_per_stage", 1, 2),
            "filters": hp.Choice("filters", [16, 24, 32, 48]),
            "kernel_size": hp.Choice("kernel_size", [3, 5]),
            "block": hp.Choice("block", ["plain", "residual"]),
            "downsample": hp.Choice("downsample", ["max", "avg", "stride"]),
            "head": hp.Choice("head", ["gap", "gmp", "flatten"]),
            "dense_units": hp.Choice("dense_units", [0, 64, 128]),
            "dropout": hp.Float("dropout", 0.0, 0.5, step=0.1),
            "optimizer": hp.Choice("optimizer", ["adam", "adamw", "sgd"]),
        }
        with hp.conditional_scope("optimizer", ["adam", "adamw"]):
            v["learning_rate"] = hp.Float("learning_rate", 1e-4, 3e-3, sampling="log")
        with hp.conditional_scope("optimizer", ["adamw"]):
            v["weight_decay"] = hp.Float("weight_decay", 1e-5, 1e-2, sampling="log")
        with hp.conditional_scope("optimizer", ["sgd"]):
            v["sgd_learning_rate"] = hp.Float("sgd_learning_rate", 1e-3, 1e-1, sampling="log")
        return v

    def describe(self, hp: kt.HyperParameters) -> str:
        """One line of the key choices, for progress output."""
        v = hp.values
        lr = v.get("sgd_learning_rate") if v.get("optimizer") == "sgd" else v.get("learning_rate")
        lr_s = f"{lr:.1e}" if isinstance(lr, float) else "?"
        return (
            f"{v.get('stem')} {v.get('stages')}x{v.get('blocks_per_stage')} "
            f"{v.get('block')} f{v.get('filters')} k{v.get('kernel_size')} "
            f"ds={v.get('downsample')} head={v.get('head')}+{v.get('dense_units')} "
            f"drop={v.get('dropout', 0):.1f} {v.get('optimizer')} lr={lr_s}"
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
        x = _stem(inputs, v["stem"], v["filters"])
        for stage in range(v["stages"]):
            filters = min(MAX_FILTERS, v["filters"] * 2**stage)
            for b in range(v["blocks_per_stage"]):
                name = f"s{stage + 1}b{b + 1}"
                down = b == 0 and stage > 0
                if v["block"] == "residual":
                    x = _residual_block(x, filters, v["kernel_size"], down, v["downsample"], name)
                else:
                    x = _plain_block(x, filters, v["kernel_size"], down, v["downsample"], name)
        if v["head"] == "gap":
            x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
        elif v["head"] == "gmp":
            x = keras.layers.GlobalMaxPooling2D(name="head_pool")(x)
        else:
            x = keras.layers.Flatten(name="head_flatten")(x)
        if v["dropout"] > 0:
            x = keras.layers.Dropout(v["dropout"], name="head_dropout")(x)
        if v["dense_units"]:
            x = keras.layers.Dense(v["dense_units"], activation="relu", name="head_dense")(x)
            if v["dropout"] > 0:
                x = keras.layers.Dropout(v["dropout"], name="head_dropout2")(x)
        # float32 output so mixed_bfloat16 still yields float32 probabilities and loss.
        outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="head_out")(x)
        model = keras.Model(inputs, outputs, name="custom_cnn")
        model.weights_kind = "random-init"  # by design; transfer families say which weights
        model.compile(
            optimizer=_optimizer(v),
            loss=keras.losses.BinaryCrossentropy(),
            metrics=compile_metrics(),
        )
        return model


def _conv_bn_relu(x: Any, filters: int, kernel: int, strides: int, name: str) -> Any:
    x = keras.layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _stem(x: Any, kind: str, filters: int) -> Any:
    """Downsample by 4 before any full-width convolution (the cheap-on-CPU part)."""
    if kind == "space_to_depth4":
        x = SpaceToDepth(4, name="stem_s2d")(x)
        return _conv_bn_relu(x, filters, 3, 1, "stem")
    kernel = 5 if kind == "conv5_s2_pool" else 7
    x = _conv_bn_relu(x, filters, kernel, 2, "stem")
    return keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)


def _downsample(x: Any, how: str, name: str) -> Any:
    if how == "max":
        return keras.layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    return keras.layers.AveragePooling2D(2, name=f"{name}_pool")(x)


def _enter_block(x: Any, down: bool, how: str, name: str) -> tuple[Any, int]:
    """Downsample on entry by pooling, or hand back stride 2 for the block's first conv."""
    if not down:
        return x, 1
    if how == "stride":
        return x, 2
    return _downsample(x, how, name), 1


def _plain_block(x: Any, filters: int, kernel: int, down: bool, how: str, name: str) -> Any:
    x, strides = _enter_block(x, down, how, name)
    x = _conv_bn_relu(x, filters, kernel, strides, f"{name}_a")
    return _conv_bn_relu(x, filters, kernel, 1, f"{name}_b")


def _residual_block(x: Any, filters: int, kernel: int, down: bool, how: str, name: str) -> Any:
    """Post-activation basic block; projection shortcut when shape changes."""
    x, strides = _enter_block(x, down, how, name)
    shortcut = x
    y = _conv_bn_relu(x, filters, kernel, strides, f"{name}_a")
    y = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_b_conv")(
        y
    )
    y = keras.layers.BatchNormalization(name=f"{name}_b_bn")(y)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, name=f"{name}_proj_conv"
        )(shortcut)
        shortcut = keras.layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _optimizer(v: dict[str, Any]) -> keras.optimizers.Optimizer:
    if v["optimizer"] == "sgd":
        return keras.optimizers.SGD(v["sgd_learning_rate"], momentum=0.9, nesterov=True)
    if v["optimizer"] == "adamw":
        return keras.optimizers.AdamW(v["learning_rate"], weight_decay=v["weight_decay"])
    return keras.optimizers.Adam(v["learning_rate"])
