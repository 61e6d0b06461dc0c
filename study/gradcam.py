"""Grad-CAM heatmaps: where in the X-ray did the model look?

Used by the report (do heatmaps fall inside the lungs, or on text markers and
borders?) and by the service (a heatmap PNG next to each prediction).

Grad-CAM (Selvaraju et al., 2017): take the last convolutional feature map
A (h x w x K), weight each channel by the spatial mean of d score / d A, sum,
keep the positive part, upsample to the input size and scale to [0, 1].

Models here are binary with one sigmoid unit, output shape (N, 1). The score
is the *logit* of that unit when Keras exposes it (it does for a sigmoid
activation on the TensorFlow backend), else the probability: gradients of a
saturated probability (P = 1.0 in float32, and much earlier in bfloat16) are
exactly zero and would give blank heatmaps for the most confident cases.

Transfer-learning models wrap a backbone (a functional model) as one layer,
so the last convolution is not in ``model.layers``. We then build a
two-output model *inside* the backbone (its conv map and its output) and run
the outer model's layers in sequence, swapping in that two-output backbone.
The result is checked against ``model(images)``, so an outer graph that is
not a simple chain fails loudly instead of giving a wrong heatmap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

Forward = Callable[[Any], tuple[Any, Any]]
_NOT_A_CHAIN = (
    "rebuilt forward pass does not reproduce the model; the outer model is not a simple chain "
    "of layers around the nested backbone: pass layer_name of a top-level 4-D layer instead"
)


# --------------------------------------------------------------------------- finding the layer


def _is_4d(layer: Any) -> bool:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # layer never called, or several outputs
        return False
    return len(shape) == 4


def _sublayers(layer: Any) -> list[Any] | None:
    """Layers of a nested model, or None for an ordinary layer."""
    import keras

    return list(layer.layers) if isinstance(layer, keras.Model) else None


def find_conv_path(model: Any, layer_name: str | None = None) -> list[Any]:
    """[model, sub-model, ..., target layer]: the chain of containers down to the CAM layer.

    With ``layer_name=None`` the target is the last layer (searching nested
    models depth-first from the end) whose output is 4-D, i.e. a spatial
    feature map; a nested model whose output is itself 4-D is entered, not
    taken whole, so the target is always a real layer.
    """

    def search(container: Any) -> list[Any] | None:
        for layer in reversed(container.layers):
            subs = _sublayers(layer)
            if subs is not None:
                found = search(layer)
                if found is not None:
                    return [layer, *found]
                continue
            if (layer_name is None and _is_4d(layer)) or layer.name == layer_name:
                return [layer]
        return None

    found = search(model)
    if found is None:
        what = f"layer {layer_name!r}" if layer_name else "a layer with a 4-D output"
        raise ValueError(f"no {what} in model {model.name!r} or its nested models")
    return [model, *found]


# --------------------------------------------------------------------------- forward pass


def _two_output(container: Any, target: Any) -> Forward:
    """Target layer directly inside ``container``: one functional model gives both outputs."""
    import keras

    sub = keras.Model(container.inputs, [target.output, container.output])
    return lambda x: tuple(sub(x, training=False))


def _chain(container: Any, child: Any, child_fn: Forward) -> Forward:
    """Run ``container``'s layers in order, swapping ``child`` for its two-output version."""
    import keras

    layers = [la for la in container.layers if not isinstance(la, keras.layers.InputLayer)]

    def run(x: Any) -> tuple[Any, Any]:
        conv = None
        try:
            for layer in layers:
                # Outside model.fit, training defaults to inference (no dropout, BN moving stats).
                conv, x = child_fn(x) if layer is child else (conv, layer(x))
        except Exception as e:  # a layer that takes several inputs, etc.
            raise RuntimeError(_NOT_A_CHAIN) from e
        return conv, x

    return run


def build_forward(model: Any, layer_name: str | None = None) -> tuple[Forward, str, bool]:
    """images -> (feature map, prediction); the CAM layer's name; whether it is nested."""
    path = find_conv_path(model, layer_name)
    target = path[-1]
    fn = _two_output(path[-2], target)
    for container, child in zip(reversed(path[:-2]), reversed(path[1:-1]), strict=True):
        fn = _chain(container, child, fn)
    return fn, target.name, len(path) > 2


# --------------------------------------------------------------------------- Grad-CAM


def _score(pred: Any, class_index: int) -> Any:
    import tensorflow as tf

    logits = getattr(pred, "_keras_logits", None)
    out = logits if logits is not None else pred
    return tf.cast(out[:, class_index], tf.float32)


def gradcam(
    model: Any,
    images: np.ndarray,
    layer_name: str | None = None,
    class_index: int = 0,
    batch_size: int = 32,
    check: bool = True,
) -> np.ndarray:
    """Heatmaps (N, H, W) in [0, 1] at input resolution, for output unit ``class_index``.

    Works for bfloat16 models (``mixed_bfloat16``): feature maps and
    gradients are cast to float32 before weighting. A heatmap with no positive
    evidence is all zeros rather than noise scaled up to 1. For nested
    models ``check`` compares the rebuilt forward pass with ``model(x)`` on
    the first batch, which catches an outer graph that is not a plain chain.
    """
    import tensorflow as tf

    x_all = np.asarray(images, dtype=np.float32)
    if x_all.ndim == 3:
        x_all = x_all[..., None]
    if x_all.ndim != 4:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got {x_all.shape}")
    n, h, w = x_all.shape[:3]
    forward, _, nested = build_forward(model, layer_name)
    out = np.zeros((n, h, w), np.float32)
    for start in range(0, n, batch_size):
        x = tf.convert_to_tensor(x_all[start : start + batch_size])
        with tf.GradientTape() as tape:
            tape.watch(x)  # frozen backbones have no trainable variables to record the graph
            conv, pred = forward(x)
            score = _score(pred, class_index)
        if check and nested and start == 0:
            ref = np.asarray(tf.cast(model(x, training=False), tf.float32))
            got = np.asarray(tf.cast(pred, tf.float32))
            if ref.shape != got.shape or not np.allclose(ref, got, atol=2e-2, rtol=2e-2):
                raise RuntimeError(_NOT_A_CHAIN)
        grads = tape.gradient(score, conv)
        conv32 = tf.cast(conv, tf.float32)
        grads32 = tf.cast(grads, tf.float32)
        weights = tf.reduce_mean(grads32, axis=(1, 2), keepdims=True)  # (B, 1, 1, K)
        cam = tf.nn.relu(tf.reduce_sum(conv32 * weights, axis=-1)).numpy()  # (B, h', w')
        for i, c in enumerate(cam):
            up = cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR)
            peak = float(up.max())
            out[start + i] = np.clip(up / peak, 0.0, 1.0) if peak > 1e-12 else 0.0
    return out


# --------------------------------------------------------------------------- pictures


def _to_uint8(gray: np.ndarray) -> np.ndarray:
    g = np.asarray(gray)
    if g.ndim == 3 and g.shape[-1] == 1:
        g = g[..., 0]
    if g.ndim != 2:
        raise ValueError(f"expected a grey image (H, W), got {g.shape}")
    if g.dtype == np.uint8:
        return g
    g = g.astype(np.float32)
    if g.max() > 1.0 + 1e-6:  # 0-255 floats
        g = g / 255.0
    return np.rint(np.clip(g, 0.0, 1.0) * 255.0).astype(np.uint8)


def overlay(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8: the X-ray in grey with the heatmap (JET colormap) blended on top.

    ``gray`` may be uint8 or float in [0, 1]; the heatmap is resized to it.
    """
    g = _to_uint8(gray)
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.shape != g.shape:
        hm = cv2.resize(hm, (g.shape[1], g.shape[0]), interpolation=cv2.INTER_LINEAR)
    hm8 = np.rint(np.clip(hm, 0.0, 1.0) * 255.0).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(hm8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    base = cv2.cvtColor(g, cv2.COLOR_GRAY2RGB)
    blended = (1.0 - alpha) * base.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.rint(np.clip(blended, 0, 255)).astype(np.uint8)


def heatmap_png(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> bytes:
    """The overlay as PNG bytes, for the service's response and the report."""
    rgb = overlay(gray, heatmap, alpha)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


# --------------------------------------------------------------------------- where is the heat?


def fraction_in_region(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of total heatmap mass inside ``mask`` (0 if the heatmap is empty).

    Compare it with the mask's share of the image (``mask.mean()``): a heatmap
    that ignores anatomy scores about that much by chance.
    """
    hm = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    m = np.asarray(mask, dtype=bool)
    if hm.shape != m.shape:
        raise ValueError(f"heatmap {hm.shape} and mask {m.shape} differ in shape")
    total = hm.sum()
    return float(hm[m].sum() / total) if total > 0 else 0.0


def central_lung_mask(h: int, w: int) -> np.ndarray:
    """Rough lung fields of a frontal (PA/AP) chest X-ray: two ellipses, True inside.

    Not a segmentation, a stated prior for "is the heat on the lungs or on
    labels, shoulders, abdomen and borders?". In fractions of the image size:
    centres at x = 0.30 and 0.70 of the width, y = 0.47 of the height;
    semi-axes 0.16 of the width (horizontal) and 0.30 of the height
    (vertical). So each field spans x 0.14-0.46 / 0.54-0.86 and y 0.17-0.77,
    leaving the mediastinum (x 0.46-0.54), the neck and label corners at the
    top and the abdomen at the bottom outside. It assumes the preprocessed,
    stretched-to-square framing of the Kermany images; the two ellipses cover
    about 30 % of the image.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy = (yy + 0.5) / h
    xx = (xx + 0.5) / w
    cy, ry, rx = 0.47, 0.30, 0.16
    mask = np.zeros((h, w), bool)
    for cx in (0.30, 0.70):
        mask |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    return mask
