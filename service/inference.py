"""The model inside a worker process: loaded once, warmed up, then prediction + Grad-CAM per job.

Preprocessing is never reimplemented here: the model input comes from
``Winner.prepare`` (study.data.preprocess with the winner's own config). The
heatmap overlay is drawn on the decoded X-ray (grey, windowed, at most
``OVERLAY_SIDE`` px) so a reviewer sees it at a useful size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from study.data.preprocess import to_grayscale, window
from study.select.model_io import Winner, load_winner

OVERLAY_SIDE = 512


class ModelNotFound(RuntimeError):
    """No MODEL_PATH and no results/*/winner: the worker cannot start."""


def _gradcam_module() -> Any:
    try:
        from study.report import gradcam
    except ImportError as exc:  # the Grad-CAM module is another developer's; say so clearly
        raise RuntimeError(
            "study/report/gradcam.py is missing: heatmaps need gradcam() and heatmap_png()"
        ) from exc
    return gradcam


@dataclass
class Outcome:
    probability: float
    label: str
    threshold: float
    heatmap_png: bytes
    inference_ms: float
    heatmap_ms: float


class ModelRuntime:
    """One per worker process."""

    def __init__(self, model_path: Path) -> None:
        self.winner: Winner = load_winner(model_path)
        self.gradcam = _gradcam_module()
        self.keras = self.winner.keras_model()

    @classmethod
    def from_settings(cls, settings: Any) -> ModelRuntime:
        path = settings.resolve_model_path()
        if path is None:
            raise ModelNotFound("no MODEL_PATH set and no results/*/winner found")
        return cls(Path(path))

    @property
    def name(self) -> str:
        return self.winner.name

    @property
    def version(self) -> str:
        return self.winner.version

    def warm_up(self) -> None:
        """First calls trace TF functions (seconds); pay that at start, not on the first upload."""
        s = self.winner.preprocess.image_size
        x = np.zeros((1, s, s, 1), np.float32)
        self.winner.predict_batch(x)
        self.gradcam.gradcam(self.keras, x)

    def predict_only(self, data: bytes) -> float:
        """Probability alone (the benchmark's model-only latency)."""
        return self.winner.predict_bytes(data)

    def run(self, data: bytes, pixels: np.ndarray | None) -> Outcome:
        t0 = time.perf_counter()
        # The gate already decoded the bytes: reuse its pixels (same study.data.preprocess path).
        x = (self.winner.prepare(data) if pixels is None else self.winner.prepare_pixels(pixels))[
            None
        ]
        prob = float(self.winner.predict_batch(x)[0])
        t1 = time.perf_counter()
        cam = self.gradcam.gradcam(self.keras, x)[0]
        png = self.gradcam.heatmap_png(_overlay_base(pixels, x[0, ..., 0]), cam)
        t2 = time.perf_counter()
        return Outcome(
            probability=prob,
            label=self.winner.label_for(prob),
            threshold=self.winner.threshold,
            heatmap_png=png,
            inference_ms=(t1 - t0) * 1000.0,
            heatmap_ms=(t2 - t1) * 1000.0,
        )


def _overlay_base(pixels: np.ndarray | None, model_input: np.ndarray) -> np.ndarray:
    """The decoded X-ray in grey (windowed to 8 bits), shrunk to at most OVERLAY_SIDE px."""
    if pixels is None:
        return model_input
    gray = window(to_grayscale(pixels))
    h, w = gray.shape[:2]
    f = OVERLAY_SIDE / max(h, w)
    if f < 1.0:
        gray = cv2.resize(
            gray, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA
        )
    return gray
