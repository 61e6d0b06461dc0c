"""The model inside a worker process: loaded once, warmed up, then prediction + Grad-CAM per job.

Preprocessing is never reimplemented here: the model input comes from
``Winner.prepare`` (the study's preprocessing with the winner's own config). The
heatmap overlay is drawn on the decoded X-ray (``grey_preview``: grey, windowed,
at most ``OVERLAY_SIDE`` px) so a reviewer sees it at a useful size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from study.serving import Winner, gradcam, grey_preview, heatmap_png, load_winner

OVERLAY_SIDE = 512


class ModelNotFound(RuntimeError):
    """No MODEL_PATH and no results/*/winner: the worker cannot start."""


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
        gradcam(self.keras, x)

    def predict_only(self, data: bytes) -> float:
        """Probability alone (the benchmark's model-only latency)."""
        return self.winner.predict_bytes(data)

    def run(self, data: bytes, pixels: np.ndarray | None) -> Outcome:
        t0 = time.perf_counter()
        # The gate already decoded the bytes: reuse its pixels (same preprocessing path).
        x = (self.winner.prepare(data) if pixels is None else self.winner.prepare_pixels(pixels))[
            None
        ]
        prob = float(self.winner.predict_batch(x)[0])
        t1 = time.perf_counter()
        cam = gradcam(self.keras, x)[0]
        png = heatmap_png(_overlay_base(pixels, x[0, ..., 0]), cam)
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
    gray = None if pixels is None else grey_preview(pixels, max_side=OVERLAY_SIDE)
    return model_input if gray is None else gray
