"""Learned features for the chest detector: the ImageNet EfficientNet-Lite0 backbone, pooled.

Why a pretrained network: the eigen-lung PCA of 32x32 thumbnails learned "looks like
a Kermany image"; ImageNet features describe content (anatomy, texture, layout), so
a density fitted on chest films in that space generalises to films from other
hospitals. Input is the gate's windowed 224x224 working image (the network's own
resolution) copied to three channels; output is the 1280-d global average pool of
the last feature map. One forward pass costs about 15 ms on one CPU core.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

EMBED_SIZE = 224
BATCH = 32
BACKBONE_FILE = "backbone.weights.h5"

_LOCK = threading.Lock()
_EMBEDDERS: dict[str, Embedder] = {}


class Embedder:
    """The headless backbone in float32, compiled once as a tf.function."""

    def __init__(self, weights: Path) -> None:
        import keras
        import tensorflow as tf

        from study.models.efficientnet_lite import MEAN_RGB, STDDEV_RGB, build_efficientnet_lite

        self._shift, self._scale = np.float32(MEAN_RGB[0]), np.float32(STDDEV_RGB[0])

        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("float32")  # a study may have left mixed precision on
        try:
            self.model = build_efficientnet_lite(
                "lite0",
                input_shape=(EMBED_SIZE, EMBED_SIZE, 3),
                include_top=False,
                pooling="avg",
                weights=weights,
            )
        finally:
            keras.config.set_dtype_policy(policy)
        self._fn = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def __call__(self, works: np.ndarray) -> np.ndarray:
        """(n, 224, 224) uint8 windowed images -> (n, 1280) float32 features."""
        works = np.asarray(works)
        if works.ndim == 2:
            works = works[None]
        out = []
        for i in range(0, len(works), BATCH):
            x = works[i : i + BATCH].astype(np.float32)[..., None]
            x = (np.repeat(x, 3, axis=-1) - self._shift) / self._scale
            out.append(np.asarray(self._fn(x), dtype=np.float32))
        return (
            np.concatenate(out) if out else np.zeros((0, self.model.output_shape[-1]), np.float32)
        )


def embedding_dim() -> int:
    """Width of the features (the backbone's head); imports Keras, so only when fitting/loading."""
    from study.models.efficientnet_lite import HEAD_FILTERS

    return HEAD_FILTERS


def embedder(weights: Path) -> Embedder:
    """One Embedder per weights file per process (building it takes a few seconds)."""
    key = str(Path(weights).resolve())
    with _LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = Embedder(Path(weights))
        return _EMBEDDERS[key]
