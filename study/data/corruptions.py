"""Hospital and device differences as image corruptions, for the shift validation set.

The study's winner scores AUC 0.997 on a test split carved from train but 0.969
on the official Kermany test split (other devices, exposure, time). Each
function here imitates one thing that differs between hospitals and devices, so
thresholds, calibration and robustness can be checked on a shift we control.

Every corruption is ``f(img, severity, rng) -> img``: ``img`` is a uint8 HxW
grey image (the windowed image of :func:`study.data.preprocess.windowed`),
``severity`` is 1, 2 or 3, and ``rng`` makes the random choices (direction,
positions, noise), so the output is a deterministic function of the rng's seed.
Each function draws the same random numbers whatever the severity, so for one
seed the effect grows monotonically with severity. Shape and dtype are kept.

Severity parameters live in one table, :data:`TABLE` (also in data/README.md).
Sizes are fractions of the image's short side, so they mean the same on a
224 px training copy and a 2000 px upload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np

# Bump when any corruption or parameter changes: it is part of the shift cache key.
CORRUPTIONS_VERSION = "1"
SEVERITIES = (1, 2, 3)


class Corruption(StrEnum):
    """The closed set of corruptions, in the order figures and tables show them."""

    EXPOSURE = "exposure"
    CONTRAST = "contrast"
    BLUR_SHARPEN = "blur_sharpen"
    NOISE = "noise"
    JPEG = "jpeg"
    RESOLUTION = "resolution"
    COLLIMATION = "collimation"
    POSITIONING = "positioning"
    MARKERS = "markers"


Params = tuple[float, ...]
CorruptionFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Severities:
    """A corruption's parameters at severity 1, 2 and 3, and their physical meaning."""

    params: tuple[Params, Params, Params]
    meaning: str


def params(corruption: Corruption, img: np.ndarray, severity: int) -> Params:
    """Check the input and return the corruption's parameters at ``severity``."""
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"expected a uint8 HxW grey image, got {img.dtype} {img.shape}")
    return TABLE[corruption].params[severity - 1]


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _short(img: np.ndarray) -> int:
    return min(img.shape)


def exposure(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Over- or under-exposure: a gamma curve, bright (gamma < 1) or dark (gamma > 1)."""
    p = params(Corruption.EXPOSURE, img, severity)
    dark = rng.random() < 0.5
    gamma = p[1] if dark else p[0]
    lut = _to_u8(255.0 * (np.arange(256) / 255.0) ** gamma)
    return cv2.LUT(img, lut)


def contrast(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Another display window: flatter or harder contrast around the mean (clipped)."""
    p = params(Corruption.CONTRAST, img, severity)
    flat = rng.random() < 0.5
    c = p[0] if flat else p[1]
    mean = float(img.mean())
    return _to_u8(mean + (img.astype(np.float32) - mean) * c)


def blur_sharpen(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A softer detector (Gaussian blur) or a vendor's edge enhancement (unsharp mask)."""
    p = params(Corruption.BLUR_SHARPEN, img, severity)
    blur = rng.random() < 0.5
    sigma, amount = p[0] * _short(img), p[1]
    soft = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma)
    if blur:
        return _to_u8(soft)
    return _to_u8(img + amount * (img - soft))


def noise(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Low dose: quantum (Poisson-like, std grows with sqrt of signal) plus detector read noise."""
    p = params(Corruption.NOISE, img, severity)
    x = img.astype(np.float32) / 255.0
    std = p[0] * np.sqrt(0.2 + 0.8 * x)  # read-noise floor plus photon noise
    z = rng.standard_normal(img.shape).astype(np.float32)
    return _to_u8(255.0 * (x + std * z))


def jpeg(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Re-compression by a PACS export or an upload: JPEG at quality q (8x8 blocks, ringing)."""
    p = params(Corruption.JPEG, img, severity)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(p[0])])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode the image")
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def resolution(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A coarser detector pixel: downsample by a factor, then back up (bilinear)."""
    p = params(Corruption.RESOLUTION, img, severity)
    h, w = img.shape
    small = (max(1, round(w / p[0])), max(1, round(h / p[0])))
    down = cv2.resize(img, small, interpolation=cv2.INTER_AREA)
    return cv2.resize(down, (w, h), interpolation=cv2.INTER_LINEAR)


def collimation(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Collimator shutters: margins (up to a fraction per side), black or unexposed light grey."""
    p = params(Corruption.COLLIMATION, img, severity)
    h, w = img.shape
    sides = rng.uniform(0.4, 1.0, size=4) * p[0]  # top, bottom, left, right
    fill = 0 if rng.random() < 0.5 else int(rng.integers(190, 236))
    out = img.copy()
    t, b, left, r = (int(round(f * n)) for f, n in zip(sides, (h, h, w, w), strict=True))
    out[:t], out[h - b :], out[:, :left], out[:, w - r :] = fill, fill, fill, fill
    return out


def positioning(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Another patient position: small rotation and zoom-out about a shifted centre, black fill."""
    p = params(Corruption.POSITIONING, img, severity)
    h, w = img.shape
    angle = p[0] * (1 if rng.random() < 0.5 else -1)
    shift = rng.uniform(-1.0, 1.0, size=2) * (1.0 - p[1]) * 0.5 * np.array([w, h])
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, p[1])
    m[:, 2] += shift
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)


_WORDS = ("PORTABLE", "AP SUPINE", "ERECT", "12/03", "ID 0417")


def markers(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Burned-in annotations: L/R marker, text, a ruler bar; more and larger with severity."""
    p = params(Corruption.MARKERS, img, severity)
    h, w = img.shape
    s = _short(img)
    n_items, size = int(p[0]), p[1]
    # Draw every random number up front so severity changes only how much is drawn.
    spots = rng.uniform(0.05, 0.8, size=(4, 2)) * np.array([w, h])
    words = rng.choice(len(_WORDS), size=4, replace=False)
    side = "L" if rng.random() < 0.5 else "R"
    out = img.copy()
    scale, thick = size * s / 300.0, max(1, round(size * s / 150.0))
    items = [side, _WORDS[words[1]], "ruler", _WORDS[words[3]]][:n_items]
    for (x, y), item in zip(spots.astype(int), items, strict=False):
        if item == "ruler":
            x1 = min(w - 1, x + int(0.3 * w * size))
            cv2.rectangle(out, (x, y), (x1, y + thick * 2), 255, -1)
            for tick in range(x, x1, max(2, thick * 3)):
                cv2.line(out, (tick, y), (tick, y - thick * 3), 255, max(1, thick // 2))
            continue
        glyph_scale = scale * (2.0 if item in "LR" else 1.0)
        cv2.putText(out, item, (x, y), cv2.FONT_HERSHEY_SIMPLEX, glyph_scale, 255, thick)
    return out


TABLE: dict[Corruption, Severities] = {
    Corruption.EXPOSURE: Severities(
        ((0.7, 1.4), (0.5, 2.0), (0.35, 2.8)), "gamma if brightened / if darkened (50:50)"
    ),
    Corruption.CONTRAST: Severities(
        ((0.75, 1.15), (0.55, 1.3), (0.4, 1.5)), "contrast factor if flatter / if harder (50:50)"
    ),
    Corruption.BLUR_SHARPEN: Severities(
        ((0.004, 0.5), (0.008, 0.9), (0.014, 1.4)),
        "Gaussian sigma (fraction of short side); unsharp-mask amount if sharpened (50:50)",
    ),
    Corruption.NOISE: Severities(((0.03,), (0.05,), (0.08,)), "noise std at white (of range)"),
    Corruption.JPEG: Severities(((40,), (20,), (10,)), "JPEG quality"),
    Corruption.RESOLUTION: Severities(((2,), (3,), (4,)), "downsampling factor"),
    Corruption.COLLIMATION: Severities(
        ((0.05,), (0.10,), (0.16,)), "largest margin per side (fraction of side)"
    ),
    Corruption.POSITIONING: Severities(
        ((3, 0.95), (6, 0.88), (10, 0.8)), "rotation in degrees; zoom-out scale"
    ),
    Corruption.MARKERS: Severities(
        ((1, 0.6), (2, 0.8), (4, 1.0)), "number of burned-in items; relative glyph size"
    ),
}

REGISTRY: dict[Corruption, CorruptionFn] = {
    Corruption.EXPOSURE: exposure,
    Corruption.CONTRAST: contrast,
    Corruption.BLUR_SHARPEN: blur_sharpen,
    Corruption.NOISE: noise,
    Corruption.JPEG: jpeg,
    Corruption.RESOLUTION: resolution,
    Corruption.COLLIMATION: collimation,
    Corruption.POSITIONING: positioning,
    Corruption.MARKERS: markers,
}


def corrupt(
    img: np.ndarray, corruption: str, severity: int, rng: np.random.Generator
) -> np.ndarray:
    """Apply one named corruption (ValueError for an unknown name or a severity outside 1-3)."""
    return REGISTRY[Corruption(corruption)](img, severity, rng)
