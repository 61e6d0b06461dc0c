"""EfficientNet-Lite numbers that callers need without building the network.

Why a module of its own: :mod:`study.models.efficientnet_lite` imports Keras (and so
TensorFlow, seconds of start-up and C++ log lines on stderr); the input gate runs the
converted backbone on the LiteRT interpreter and needs only its input normalisation
and feature width, so ``python -m service.gate`` never loads TensorFlow.
"""

from __future__ import annotations

# Inception-style normalisation of the TF EfficientNet-Lite builder
# (efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB = [127.0] * 3,
# STDDEV_RGB = [128.0] * 3).
MEAN_RGB: tuple[float, float, float] = (127.0, 127.0, 127.0)
STDDEV_RGB: tuple[float, float, float] = (128.0, 128.0, 128.0)

HEAD_FILTERS = 1280  # channels of the head conv: the width of the pooled features
