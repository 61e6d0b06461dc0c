"""Search spaces, one Keras-Tuner HyperModel per CNN family, and the one table of families.

Every hypermodel is constructed as ``hypermodel_class(name)(image_size, seed, weights,
precision)`` where ``weights`` is a :class:`study.models.weights.WeightsSource` (ignored by
``custom_cnn``; transfer families raise :class:`study.models.weights.WeightsUnavailableError`
without usable weights) and ``precision`` is a Keras dtype policy name that ``build`` sets as
the global policy (``None``: keep the current one), and ``build(hp)`` returns a compiled model:
float32 ``(N, S, S, 1)`` in [0, 1] -> sigmoid ``(N, 1)`` float32. ``describe(hp)`` gives a
one-line summary for progress output.

This module stays TensorFlow-free: the table names each hypermodel by import path, so the
study's flags and ``--help`` can list the families without importing Keras.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal, get_args

DtypePolicy = Literal["float32", "mixed_bfloat16"]
DTYPE_POLICIES: tuple[str, ...] = get_args(DtypePolicy)
# "auto" = each family's measured best policy (Family.precision).
PRECISION_CHOICES: tuple[str, ...] = ("auto", *DTYPE_POLICIES)


@dataclass(frozen=True)
class Family:
    """One CNN family the study can search."""

    name: str
    hypermodel: str  # "module:Class", imported only when the family is built
    precision: DtypePolicy  # Keras dtype policy used when --precision is auto
    needs_weights: bool  # transfer family: skipped when no ImageNet weights are available

    def hypermodel_class(self) -> type:
        module, cls = self.hypermodel.split(":")
        return getattr(importlib.import_module(module), cls)


# Precision measured (benchmarks/results/training.md, README): bf16 speeds up dense convs
# here but slows EfficientNet's depthwise convs.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "custom_cnn", "search_spaces.custom_cnn:CustomCNNHyperModel", "mixed_bfloat16", False
        ),
        Family("resnet", "search_spaces.resnet:ResNetHyperModel", "mixed_bfloat16", True),
        Family(
            "efficientnet", "search_spaces.efficientnet:EfficientNetHyperModel", "float32", True
        ),
    )
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


def hypermodel_class(name: str) -> type:
    """The hypermodel class of family ``name`` (imports Keras on first use)."""
    return FAMILIES[name].hypermodel_class()


def dtype_policy(family: str, precision: str) -> str:
    """The Keras dtype policy a family trains in: its table entry when ``precision`` is auto."""
    return FAMILIES[family].precision if precision == "auto" else precision


__all__ = [
    "DTYPE_POLICIES",
    "FAMILIES",
    "FAMILY_NAMES",
    "PRECISION_CHOICES",
    "Family",
    "dtype_policy",
    "hypermodel_class",
]
