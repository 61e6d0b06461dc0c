"""The one door from the service into the study: everything ``service/`` may use.

``service/`` imports this module and no other study module
(tests/test_architecture.py checks it), so the study's stages can be
rearranged without touching the service, and what serving relies on is
listed here, each name re-exported from the stage that owns it:

* the winner (:mod:`study.select.model_io`): :func:`load_winner`,
  :class:`Winner`, :func:`newest_winner`.
* decoding (:mod:`study.data.preprocess`): :func:`decode`, :func:`sniff_format`,
  :func:`header_size` (declared size, read before decoding), :class:`Decoded`,
  :class:`ImageDecodeError` and :data:`MAX_PIXELS`, the project's one pixel limit.
* DICOM before decoding (:mod:`study.data.dicom`): :func:`dicom_header` (declared
  sizes and header fields, checked) and :func:`deidentify_dicom` (the allow-list
  copy that is stored instead of the upload); for JPEG/PNG
  :func:`strip_metadata` (:mod:`study.data.metadata`).
* preprocessing steps, for the input gate's features: :func:`to_grayscale`,
  :func:`window`, :func:`normalise`, :func:`resize`, :class:`PreprocessConfig`.
* pictures: :func:`grey_preview` (:mod:`study.data.preview`, the one grey
  preview) and Grad-CAM (:mod:`study.report.gradcam`): :func:`gradcam`,
  :func:`heatmap_png`.
* the input gate (:mod:`study.gate`, fitted by ``run_study.py gate fit``; the
  service only loads it): :func:`load_gate`, :class:`GateModel`,
  :class:`GateUnavailableError`, :func:`compute_features`, :func:`failing_layer`,
  :func:`gate_check` (one check's JSON), :data:`GATE_DIR_NAME` (``<study>/gate``)
  and :func:`dicom_header` (the header alone, before any pixel is read).
* :data:`DEFAULT_DATA_DIR` (:mod:`study.paths`), and :func:`scan` and
  :func:`make_splits` (:mod:`study.data.records`), which load on first use:
  scikit-learn costs seconds, and the API never needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from study.data.dicom import (
    CHEST_BODY_PARTS,
    SAFE_FIELDS,
    UNKNOWN_BODY_PARTS,
    XRAY_MODALITIES,
    deidentify_dicom,
    dicom_header,
)
from study.data.metadata import strip_metadata
from study.data.preprocess import (
    MAX_PIXELS,
    Decoded,
    ImageDecodeError,
    PreprocessConfig,
    decode,
    header_size,
    normalise,
    resize,
    sniff_format,
    to_grayscale,
    window,
)
from study.data.preview import grey_preview
from study.gate.model import (
    GATE_DIR_NAME,
    GateModel,
    GateUnavailableError,
    failing_layer,
    load_gate,
)
from study.gate.model import check as gate_check
from study.gate.scalar import compute_features
from study.paths import DEFAULT_DATA_DIR
from study.report.gradcam import gradcam, heatmap_png
from study.select.model_io import Winner, load_winner, newest_winner

if TYPE_CHECKING:
    from study.data.records import make_splits, scan

__all__ = [
    "CHEST_BODY_PARTS",
    "SAFE_FIELDS",
    "UNKNOWN_BODY_PARTS",
    "XRAY_MODALITIES",
    "DEFAULT_DATA_DIR",
    "GATE_DIR_NAME",
    "GateModel",
    "GateUnavailableError",
    "compute_features",
    "dicom_header",
    "failing_layer",
    "gate_check",
    "load_gate",
    "MAX_PIXELS",
    "Decoded",
    "ImageDecodeError",
    "PreprocessConfig",
    "Winner",
    "decode",
    "deidentify_dicom",
    "dicom_header",
    "gradcam",
    "grey_preview",
    "header_size",
    "heatmap_png",
    "load_winner",
    "make_splits",
    "newest_winner",
    "normalise",
    "resize",
    "scan",
    "sniff_format",
    "strip_metadata",
    "to_grayscale",
    "window",
]

_LAZY = {"scan": "study.data.records", "make_splits": "study.data.records"}


def __getattr__(name: str) -> Any:
    """Load the heavy names (see the module doc) when first asked for."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
