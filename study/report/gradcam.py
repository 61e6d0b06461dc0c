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
so the last convolution is not in ``model.layers`` and its output is a tensor
of the backbone's own graph, not of the outer one. We therefore rebuild the
graph: a two-output model inside the backbone (its feature map and its
output), then the outer graph re-run symbolically with
``keras.models.clone_model(clone_function=identity, call_function=...)``,
which reuses every layer (same weights) and swaps in the two-output
backbone. That works for any outer DAG, and nesting of any depth. The
rebuilt model is checked once against ``model(x)`` and cached on the model,
so the service pays for it only on the first heatmap.

An ensemble (:func:`study.select.ensemble.build_ensemble_model`) has no single
feature map: its heatmap is its members' heatmaps, averaged with weights equal
to each member's predicted probability for that image (normalised), so
:func:`gradcam` works unchanged for a winner that is an ensemble.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

_CACHE_ATTR = "_pneumoscope_gradcam_cache"

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


def _two_output_inner(container: Any, target: Any) -> Any:
    """Target layer directly inside ``container``: one functional model gives both outputs."""
    import keras

    try:
        return keras.Model(container.inputs, [target.output, container.output])
    except ValueError as e:  # layer.output is its first call's output, maybe in another model
        raise ValueError(
            f"layer {target.name!r} was called in more than one model, so its output is not "
            f"unique; build {container.name!r} from its own layer instances"
        ) from e


def _two_output_outer(container: Any, child: Any, child_two: Any) -> Any:
    """Re-run ``container``'s graph with ``child`` swapped for its two-output version.

    Same layer objects, so same weights; only the wiring to the feature map is new.
    """
    import keras

    captured: list[Any] = []

    if isinstance(container, keras.Sequential):  # clone_model ignores call_function here
        inp = keras.Input(container.inputs[0].shape[1:], dtype=container.inputs[0].dtype)
        x = inp
        for layer in container.layers:
            if layer is child:
                conv, x = child_two(x)
                captured.append(conv)
            else:
                x = layer(x)
        return keras.Model(inp, [captured[0], x])

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer is child:
            conv, out = child_two(*args, **kwargs)
            captured.append(conv)
            return out
        return layer(*args, **kwargs)

    clone = keras.models.clone_model(
        container, clone_function=lambda layer: layer, call_function=call
    )
    if len(captured) != 1:
        raise ValueError(f"{child.name!r} is called {len(captured)} times in {container.name!r}")
    return keras.Model(clone.inputs, [captured[0], *clone.outputs])


def build_grad_model(model: Any, layer_name: str | None = None) -> tuple[Any, str, bool]:
    """A Keras model x -> [feature map, prediction]; the CAM layer's name; whether nested."""
    path = find_conv_path(model, layer_name)
    target = path[-1]
    grad_model = _two_output_inner(path[-2], target)
    for container, child in zip(reversed(path[:-2]), reversed(path[1:-1]), strict=True):
        grad_model = _two_output_outer(container, child, grad_model)
    return grad_model, target.name, len(path) > 2


# --------------------------------------------------------------------------- Grad-CAM


def _score(pred: Any) -> Any:
    """The pneumonia output (the models have one sigmoid unit), before the sigmoid if known."""
    import tensorflow as tf

    logits = getattr(pred, "_keras_logits", None)
    out = logits if logits is not None else pred
    return tf.cast(out[:, 0], tf.float32)


def _cam_step(model: Any, layer_name: str | None) -> Callable[[Any], Any]:
    """Compiled x -> (cams at feature-map size, prediction), built once per model and layer."""
    import tensorflow as tf

    cache = model.__dict__.get(_CACHE_ATTR)
    if cache is None:
        cache = {}
        # Plain attribute (not Keras-tracked): it is not saved, and it dies with the model.
        object.__setattr__(model, _CACHE_ATTR, cache)
    if layer_name in cache:
        return cache[layer_name]
    grad_model, _, nested = build_grad_model(model, layer_name)

    # Batch dimension left open: one trace serves the service's single images and batches.
    spec = tf.TensorSpec(grad_model.inputs[0].shape, tf.float32)

    @tf.function(input_signature=[spec])
    def step(x: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            tape.watch(x)  # frozen backbones have no trainable variables to record the graph
            conv, pred = grad_model(x, training=False)
            score = _score(pred)
        grads = tape.gradient(score, conv)
        if grads is None:
            raise ValueError("the prediction does not depend on the chosen layer's output")
        conv32 = tf.cast(conv, tf.float32)
        weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_sum(conv32 * weights, axis=-1)), tf.cast(pred, tf.float32)

    checked = not nested

    def run(x: Any) -> Any:
        nonlocal checked
        cams, pred = step(x)
        if not checked:  # a rebuilt graph must reproduce the model before it is trusted
            ref = tf.cast(model(x, training=False), tf.float32).numpy()
            got = pred.numpy()
            if ref.shape != got.shape or not np.allclose(ref, got, atol=2e-2, rtol=2e-2):
                raise RuntimeError("the rebuilt Grad-CAM graph does not reproduce the model")
            checked = True
        return cams.numpy()

    cache[layer_name] = run
    return run


def gradcam(
    model: Any,
    images: np.ndarray,
    layer_name: str | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Heatmaps (N, H, W) in [0, 1] at input resolution, for the pneumonia output.

    Works for bfloat16 models (``mixed_bfloat16``): feature maps and
    gradients are cast to float32 before weighting. A heatmap with no positive
    evidence is all zeros rather than noise scaled up to 1.
    """
    import tensorflow as tf

    from study.select.ensemble import ensemble_members

    x_all = np.asarray(images, dtype=np.float32)
    if x_all.ndim == 3:
        x_all = x_all[..., None]
    if x_all.ndim != 4:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got {x_all.shape}")
    members = ensemble_members(model)
    if members:
        return ensemble_gradcam(members, x_all, layer_name, batch_size)
    n, h, w = x_all.shape[:3]
    run = _cam_step(model, layer_name)
    out = np.zeros((n, h, w), np.float32)
    for start in range(0, n, batch_size):
        cams = run(tf.convert_to_tensor(x_all[start : start + batch_size]))
        for i, c in enumerate(cams):
            up = cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR)
            peak = float(up.max())
            out[start + i] = np.clip(up / peak, 0.0, 1.0) if peak > 1e-12 else 0.0
    return out


def ensemble_gradcam(
    members: list[Any], images: np.ndarray, layer_name: str | None = None, batch_size: int = 32
) -> np.ndarray:
    """An ensemble's heatmaps: its members' maps, weighted per image by each member's
    predicted probability of pneumonia (normalised to sum to 1; equal weights when every
    member says 0), so the members that drive the averaged "pneumonia" dominate the map.
    """
    x = np.asarray(images, dtype=np.float32)
    maps = np.stack([gradcam(m, x, layer_name, batch_size) for m in members])  # (M, N, H, W)
    probs = np.stack([_probabilities(m, x, batch_size) for m in members])  # (M, N)
    total = probs.sum(axis=0, keepdims=True)
    weights = np.where(total > 1e-12, probs / np.where(total > 1e-12, total, 1.0), 1 / len(members))
    return np.einsum("mn,mnhw->nhw", weights, maps).astype(np.float32)


def _probabilities(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    import keras

    out = [
        keras.ops.convert_to_numpy(
            keras.ops.cast(model(x[i : i + batch_size], training=False), "float32")
        )
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out).reshape(-1).astype(np.float64)


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
    stretched-to-square framing of the Kermany images (checked by eye on
    preprocessed training X-rays of both classes); the two ellipses cover
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
