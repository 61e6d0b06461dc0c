"""The input gate's hand-made features (X-ray and quality layers), via :mod:`study.data.preprocess`.

Every feature is measured on a *working image*: the greyscale pixels resampled to
224x224 (``resize(..., "stretch")``) and then windowed. The area shares (white
background, clipped white and black) are measured inside the content box, without flat
edge strips: collimation borders and padding are common on films from other hospitals.
The training copies are exactly 224x224 stretched, so a full-resolution upload is
measured on the same grid as the images the thresholds were learned from; this is what
makes blur and "fine detail" comparable between a 3000 px upload and a 224 px training
copy. The training copies were also smoothed by their resizer and JPEG, so sharpness is
measured after a small Gaussian (sigma 1 px), which removes the band where full-
resolution uploads and training copies differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from study.data.preprocess import resize, to_grayscale, window

WORK_SIZE = 224  # side of the training copies (PROVENANCE.md)
CHROMA_COLOURED = 0.12  # a pixel whose max-min channel spread exceeds 12% of range is coloured
WHITE_LEVEL = 250  # windowed uint8 level counted as white background
CLIP_HIGH = 254  # raw 8-bit level counted as clipped white
CLIP_LOW = 1  # raw 8-bit level counted as clipped black
CLIP_BLUR = 5  # px box filter on the 224 image before counting clipped pixels
SHARPNESS_SIGMA = 1.0
BORDER_STD = 4.0  # a row or column of the 8-bit image this flat is a border, not content
MAX_BORDER = 0.35  # at most this share of a side is trimmed as border

# name -> (layer, "max" or "min", log-scale?) ; thresholds are fitted in study.gate.fit.
FEATURES: dict[str, tuple[str, str, bool]] = {
    "colour_fraction": ("xray", "max", False),
    "white_fraction": ("xray", "max", False),
    "edge_density": ("xray", "max", False),
    "fine_detail": ("xray", "max", False),
    "min_side": ("quality", "min", False),
    "sharpness": ("quality", "min", True),
    "clipped_white": ("quality", "max", False),
    "clipped_black": ("quality", "max", False),
    "contrast": ("quality", "min", True),
}


@dataclass
class GateFeatures:
    """Scalar features plus the windowed working image (the chest detector's input)."""

    values: dict[str, float]
    work: np.ndarray  # uint8 (WORK_SIZE, WORK_SIZE), windowed


def _colour_fraction(pixels: np.ndarray) -> float:
    """Share of clearly coloured pixels: X-rays are grey even when stored as RGB."""
    if pixels.ndim != 3 or pixels.shape[2] < 3:
        return 0.0
    rgb = np.ascontiguousarray(pixels[:, :, :3]).astype(np.float32)
    rgb = resize(rgb, WORK_SIZE, "stretch")
    if pixels.dtype == np.uint8:
        rng = 255.0
    elif pixels.dtype == np.uint16:
        rng = float(max(rgb.max(), 1.0))
    else:
        rng = float(max(rgb.max() - rgb.min(), 1e-6))
    chroma = (rgb.max(axis=2) - rgb.min(axis=2)) / rng
    return float((chroma > CHROMA_COLOURED).mean())


def _raw8(small: np.ndarray) -> np.ndarray:
    """The un-windowed image in 8 bits, for exposure checks (windowing would hide clipping)."""
    if small.dtype == np.uint8:
        return small
    g = small.astype(np.float32)
    lo, hi = float(g.min()), float(g.max())
    if hi - lo < 1e-6:
        return np.zeros(g.shape, np.uint8)
    return np.rint((g - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def content_box(img: np.ndarray) -> tuple[slice, slice]:
    """The image without its flat edge strips (collimation borders, padding, letterbox
    bars): a film with white unexposed borders is not a document, nor over-exposed."""
    h, w = img.shape
    f = img.astype(np.float32)

    def span(stds: np.ndarray, n: int) -> slice:
        live = np.flatnonzero(stds > BORDER_STD)
        if live.size == 0:
            return slice(0, n)
        cap = int(n * MAX_BORDER)
        return slice(min(int(live[0]), cap), max(int(live[-1]) + 1, n - cap))

    return span(f.std(axis=1), h), span(f.std(axis=0), w)


def compute_features(pixels: np.ndarray) -> GateFeatures:
    """All gate features from decoded pixels (HxW or HxWxC, any depth)."""
    h, w = pixels.shape[:2]
    gray = to_grayscale(pixels)
    if gray.dtype not in (np.uint8, np.uint16, np.float32):
        gray = gray.astype(np.float32)
    small = resize(gray, WORK_SIZE, "stretch")
    work = window(small)
    wf = work.astype(np.float32)
    raw = _raw8(small)
    # Clipping counts areas, not strokes: thin burned-in text and markers blur away.
    blurred = cv2.blur(raw, (CLIP_BLUR, CLIP_BLUR))
    # Area shares are measured inside the content: borders are neither page nor exposure.
    box = content_box(raw)
    blurred, inner = blurred[box], work[box]

    smooth = cv2.GaussianBlur(wf, (0, 0), SHARPNESS_SIGMA)
    detail = float(cv2.Laplacian(smooth, cv2.CV_32F).var())
    values = {
        "colour_fraction": _colour_fraction(pixels),
        "white_fraction": float((inner >= WHITE_LEVEL).mean()),
        "edge_density": float((cv2.Canny(work, 100, 200) > 0).mean()),
        "fine_detail": detail,
        "min_side": float(min(h, w)),
        "sharpness": detail,
        "clipped_white": float((blurred >= CLIP_HIGH).mean()),
        "clipped_black": float((blurred <= CLIP_LOW).mean()),
        "contrast": float(raw.astype(np.float32).std() / 255.0),
    }
    return GateFeatures(values, work)
