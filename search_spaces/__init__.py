"""Search spaces, one Keras-Tuner HyperModel per CNN family.

Every hypermodel is constructed as ``FAMILIES[name](image_size, seed, weights, precision)``
where ``weights`` is a :class:`study.models.weights.WeightsSource` (ignored by ``custom_cnn``;
transfer families raise :class:`study.models.weights.WeightsUnavailableError` without usable
weights) and ``precision`` is a Keras dtype policy name that ``build`` sets as the global policy
(``None``: keep the current one), and ``build(hp)`` returns a compiled model: float32
``(N, S, S, 1)`` in [0, 1] -> sigmoid ``(N, 1)`` float32. ``describe(hp)`` gives a one-line
summary for progress output.
"""

from __future__ import annotations

from search_spaces.custom_cnn import CustomCNNHyperModel
from search_spaces.efficientnet import EfficientNetHyperModel
from search_spaces.resnet import ResNetHyperModel, TransferHyperModel

FAMILIES: dict[str, type] = {
    "custom_cnn": CustomCNNHyperModel,
    "resnet": ResNetHyperModel,
    "efficientnet": EfficientNetHyperModel,
}

__all__ = [
    "FAMILIES",
    "CustomCNNHyperModel",
    "EfficientNetHyperModel",
    "ResNetHyperModel",
    "TransferHyperModel",
]
