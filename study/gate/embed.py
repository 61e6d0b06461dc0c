"""Learned features for the chest detector: the ImageNet EfficientNet-Lite0 backbone, pooled.

Why a pretrained network: the eigen-lung PCA of 32x32 thumbnails learned "looks like
a Kermany image"; ImageNet features describe content (anatomy, texture, layout), so
a density fitted on chest films in that space generalises to films from other
hospitals. Input is the gate's windowed 224x224 working image (the network's own
resolution) copied to three channels; output is the 1280-d global average pool of
the last feature map.

Why TensorFlow Lite: one image at a time, the Keras graph spends most of its time
dispatching ops (about 30 ms on this shared machine); the same network as a TFLite
model (XNNPACK, one thread) takes about 15 ms, with the same features to 1e-5. The
fit converts the backbone once with TensorFlow's converter and stores it in the gate
folder; fitting and serving both run it on the LiteRT interpreter (``ai_edge_litert``,
the maintained successor of the deprecated ``tf.lite.Interpreter``).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path

import numpy as np

from study.models.efficientnet_lite_constants import HEAD_FILTERS, MEAN_RGB, STDDEV_RGB

EMBED_SIZE = 224
BACKBONE_FILE = "backbone.tflite"
RUNTIME = "litert-xnnpack-1thread"  # part of a saved gate's signature

_LOCK = threading.Lock()
_EMBEDDERS: dict[str, Embedder] = {}


def convert_backbone(weights: Path, out: Path) -> Path:
    """The headless float32 backbone with ``weights`` as a TFLite file at ``out``."""
    import keras
    import tensorflow as tf

    from study.models.efficientnet_lite import build_efficientnet_lite

    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")  # a study may have left mixed precision on
    try:
        model = build_efficientnet_lite(
            "lite0",
            input_shape=(EMBED_SIZE, EMBED_SIZE, 3),
            include_top=False,
            pooling="avg",
            weights=weights,
        )
    finally:
        keras.config.set_dtype_policy(policy)
    with contextlib.redirect_stdout(sys.stderr):  # the converter prints its graph's signature
        blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(blob)
    tmp.replace(out)
    return out


class Embedder:
    """One LiteRT interpreter (not thread-safe: calls are serialised)."""

    def __init__(self, backbone: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._shift, self._scale = np.float32(MEAN_RGB[0]), np.float32(STDDEV_RGB[0])
        self._it = Interpreter(model_path=str(backbone), num_threads=1)
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()[0]["index"]
        self._out = self._it.get_output_details()[0]["index"]
        self._lock = threading.Lock()

    def __call__(self, works: np.ndarray) -> np.ndarray:
        """(n, 224, 224) uint8 windowed images -> (n, 1280) float32 features."""
        works = np.asarray(works)
        if works.ndim == 2:
            works = works[None]
        out = []
        with self._lock:
            for w in works:
                x = np.repeat(w.astype(np.float32)[None, ..., None], 3, axis=-1)
                self._it.set_tensor(self._in, (x - self._shift) / self._scale)
                self._it.invoke()
                out.append(np.array(self._it.get_tensor(self._out)[0], np.float32))
        return np.stack(out) if out else np.zeros((0, embedding_dim()), np.float32)


def embedding_dim() -> int:
    """Width of the features (the backbone's head)."""
    return HEAD_FILTERS


def embedder(backbone: Path) -> Embedder:
    """One Embedder per backbone file per process."""
    key = str(Path(backbone).resolve())
    with _LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = Embedder(Path(backbone))
        return _EMBEDDERS[key]
