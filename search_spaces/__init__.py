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

``--precision auto`` gives each family the verdict of the committed precision benchmark
(``benchmarks/results/precision.json``, written by ``python -m benchmarks.precision_bench``),
read when asked, so the code cannot disagree with the table; float32 when the file, or the
family's verdict in it, is missing.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

DtypePolicy = Literal["float32", "mixed_bfloat16"]
DTYPE_POLICIES: tuple[str, ...] = get_args(DtypePolicy)
# "auto" = each family's measured best policy (Family.precision).
PRECISION_CHOICES: tuple[str, ...] = ("auto", *DTYPE_POLICIES)
PRECISION_TABLE = Path(__file__).resolve().parent.parent / "benchmarks/results/precision.json"
FALLBACK_PRECISION: DtypePolicy = "float32"  # exact; used when nothing was measured


def measured_precision(family: str, table: Path = PRECISION_TABLE) -> DtypePolicy:
    """The precision ``family`` trained faster in, per the committed benchmark ``table``."""
    try:
        verdicts = json.loads(table.read_text())["verdicts"]
        found = verdicts[family]["precision"]
    except (OSError, ValueError, KeyError, TypeError):
        return FALLBACK_PRECISION
    return found if found in DTYPE_POLICIES else FALLBACK_PRECISION


@dataclass(frozen=True)
class Family:
    """One CNN family the study can search."""

    name: str
    hypermodel: str  # "module:Class", imported only when the family is built
    needs_weights: bool  # transfer family: skipped when no ImageNet weights are available

    @property
    def precision(self) -> DtypePolicy:
        """Keras dtype policy used when --precision is auto (the benchmark's verdict)."""
        return measured_precision(self.name)

    def hypermodel_class(self) -> type:
        module, cls = self.hypermodel.split(":")
        return getattr(importlib.import_module(module), cls)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("custom_cnn", "search_spaces.custom_cnn:CustomCNNHyperModel", False),
        Family("resnet", "search_spaces.resnet:ResNetHyperModel", True),
        Family("efficientnet", "search_spaces.efficientnet:EfficientNetHyperModel", True),
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
    "FALLBACK_PRECISION",
    "FAMILY_NAMES",
    "PRECISION_CHOICES",
    "PRECISION_TABLE",
    "Family",
    "dtype_policy",
    "hypermodel_class",
    "measured_precision",
]
