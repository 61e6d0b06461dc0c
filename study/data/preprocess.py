"""The one preprocessing module: raw bytes -> model input.

Training (cache build), evaluation, prediction and the service all call
:func:`prepare` (or :func:`load_for_model`), so there is no skew between
training and serving. Every step is a small function so the report can show
an X-ray after each one (:func:`steps`).

Steps and why they help here
----------------------------
1. ``decode``: JPEG/PNG (8- or 16-bit, grey or colour) through OpenCV, DICOM
   through :mod:`study.data.dicom`. Bytes are trusted, never file extensions. An
   EXIF orientation tag (phone photos of films) is applied, so the lungs are
   upright as the viewer saw them; none of the training JPEGs carry one.
2. ``to_grayscale``: X-rays carry one channel; colour copies (RGB JPEGs from
   other repos) are collapsed so the model never learns from colour casts.
3. ``window``: robust min-max (0.5th-99.5th percentile) to 8 bits. It makes
   8-, 12- and 16-bit inputs comparable and removes burned-in white labels'
   and black borders' leverage over the dynamic range.
4. ``normalise``: CLAHE (default) or global histogram equalisation. The
   official test split differs from train in exposure and contrast; local
   equalisation makes lung texture look alike across devices and dose.
5. ``resize``: ``stretch`` (default), ``pad`` or ``crop`` to a square. The
   training copies were already squashed to 224x224 without keeping the
   aspect ratio (see PROVENANCE.md), so ``stretch`` gives full-resolution
   uploads exactly the geometry the model was trained on; ``pad`` or
   ``crop`` would show it lungs of another shape at serving time.
6. ``scale``: uint8 -> float32 in [0, 1]. Backbone-specific scaling
   (ImageNet mean/std) lives inside each model, so the SavedModel always
   takes this one input format.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import cv2
import numpy as np

SCALE = np.float32(1.0 / 255.0)
# Largest declared width*height decoded anywhere (study and service): decompression bombs
# are refused from the header, before any pixel buffer is allocated.
MAX_PIXELS = 60_000_000
ResizeMode = Literal["stretch", "pad", "crop"]
NormaliseMode = Literal["clahe", "equalize", "none"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)
NORMALISE_MODES: tuple[str, ...] = get_args(NormaliseMode)


class ImageDecodeError(ValueError):
    """The bytes are not an image this project can read."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that changes the pixels; hashed into the cache key and winner.json."""

    image_size: int = 128
    normalise: NormaliseMode = field(
        default="clahe",
        metadata={
            "help": "exposure/contrast normalisation step of the preprocessing",
            "choices": NORMALISE_MODES,
        },
    )
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    resize: ResizeMode = field(
        default="stretch",
        metadata={
            "help": "how images become square (see README: why stretch)",
            "choices": RESIZE_MODES,
        },
    )
    window_percentiles: tuple[float, float] = (0.5, 99.5)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window_percentiles"] = list(self.window_percentiles)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        d = dict(d)
        if "window_percentiles" in d:
            d["window_percentiles"] = tuple(d["window_percentiles"])
        return cls(**d)

    def key(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Decoded:
    """Decoded pixels plus what the format told us (for the gate and DICOM checks)."""

    pixels: np.ndarray  # HxW or HxWxC, uint8/uint16/float
    format: str  # "jpeg", "png", "dicom", ...
    meta: dict[str, Any]


def sniff_format(data: bytes) -> str | None:
    """Identify the container from magic bytes, never from the name."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    from study.data.dicom import looks_like_raw_dicom

    if looks_like_raw_dicom(data):
        return "dicom"
    return None


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> Decoded:
    """Step 1: bytes -> pixels. Raises ImageDecodeError with a specific reason."""
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError("unsupported or unrecognised format (expected JPEG, PNG or DICOM)")
    if fmt == "dicom":
        from study.data.dicom import decode_dicom

        pixels, meta = decode_dicom(data, max_pixels=max_pixels)
        return Decoded(pixels, fmt, meta)
    width, height = header_size(data, fmt)
    if width * height > max_pixels:
        raise ImageDecodeError(f"image is {width}x{height}, over the {max_pixels} pixel limit")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise ImageDecodeError(f"corrupt or truncated {fmt.upper()} data")
    orientation = exif_orientation(data)
    meta = {"bit_depth": 16 if arr.dtype == np.uint16 else 8, "exif_orientation": orientation}
    return Decoded(apply_orientation(arr, orientation), fmt, meta)


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8; 1 = as stored). OpenCV's IMREAD_UNCHANGED ignores it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            value = im.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return 1
    return int(value) if value in range(1, 9) else 1


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright for an EXIF orientation (the TIFF/EXIF 6.0 table)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(pixels)) if op else pixels


def header_size(data: bytes, fmt: str) -> tuple[int, int]:
    """Read declared dimensions before decoding, so decompression bombs are refused cheaply."""
    if fmt == "png":
        if len(data) < 24:
            raise ImageDecodeError("truncated PNG header")
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return w, h
        i += 2 + seg_len
    raise ImageDecodeError("corrupt or truncated JPEG: no frame header")


def to_grayscale(pixels: np.ndarray) -> np.ndarray:
    """Step 2: one channel, keeping the bit depth."""
    if pixels.ndim == 2:
        return pixels
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        return pixels[:, :, 0]
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2GRAY)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    raise ImageDecodeError(f"unexpected pixel array shape {pixels.shape}")


def window(gray: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Step 3: robust min-max to uint8, whatever the input bit depth."""
    g = gray.astype(np.float32)
    lo, hi = np.percentile(g, percentiles)
    if hi - lo < 1e-6:
        lo, hi = float(g.min()), float(g.max())
    if hi - lo < 1e-6:
        return np.zeros(gray.shape, np.uint8)
    out = (np.clip(g, lo, hi) - lo) * (255.0 / (hi - lo))
    return np.rint(out).astype(np.uint8)


def normalise(img: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Step 4: exposure/contrast normalisation on uint8."""
    if cfg.normalise == "clahe":
        clahe = cv2.createCLAHE(clipLimit=cfg.clahe_clip, tileGridSize=(cfg.clahe_tiles,) * 2)
        return clahe.apply(img)
    if cfg.normalise == "equalize":
        return cv2.equalizeHist(img)
    return img


def resize(img: np.ndarray, size: int, mode: ResizeMode = "stretch") -> np.ndarray:
    """Step 5: to size x size. INTER_AREA when shrinking avoids aliasing of rib edges."""
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
    if mode == "stretch":
        return cv2.resize(img, (size, size), interpolation=interp)
    if mode == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return cv2.resize(
            img[top : top + side, left : left + side], (size, size), interpolation=interp
        )
    if mode == "pad":
        s = size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        small = cv2.resize(img, (nw, nh), interpolation=interp)
        out = np.zeros((size, size), img.dtype)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[top : top + nh, left : left + nw] = small
        return out
    raise ValueError(f"unknown resize mode {mode!r}")


def scale(img: Any) -> Any:
    """Step 6: uint8 -> float32 in [0, 1]; works on NumPy arrays and TF tensors alike."""
    if isinstance(img, np.ndarray):
        return img.astype(np.float32) * SCALE
    import tensorflow as tf

    return tf.cast(img, tf.float32) * tf.constant(SCALE)


def windowed(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Steps 2-3: the 8-bit grey image a device produced (where shift corruptions apply)."""
    return window(to_grayscale(pixels), cfg.window_percentiles)


def finish(img: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Steps 4-5 on a windowed uint8 image: what the model sees of it."""
    return resize(normalise(img, cfg), cfg.image_size, cfg.resize)


def prepare_pixels(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Steps 2-5 on decoded pixels: the uint8 HxW image that the cache stores."""
    return finish(windowed(pixels, cfg), cfg)


def prepare(data: bytes, cfg: PreprocessConfig) -> np.ndarray:
    """Steps 1-5: bytes -> uint8 HxW (cacheable)."""
    return prepare_pixels(decode(data).pixels, cfg)


def model_input(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Steps 2-6 on already-decoded pixels (the service decodes once, in its gate)."""
    return scale(prepare_pixels(pixels, cfg))[..., None]


def load_for_model(data: bytes, cfg: PreprocessConfig) -> np.ndarray:
    """Steps 1-6: bytes -> float32 HxWx1, the model's input."""
    return model_input(decode(data).pixels, cfg)


def steps(data: bytes, cfg: PreprocessConfig) -> list[tuple[str, np.ndarray]]:
    """Each intermediate image, for the report's 'preprocessing as pictures' figure."""
    gray = to_grayscale(decode(data).pixels)
    win = window(gray, cfg.window_percentiles)
    norm = normalise(win, cfg)
    out = resize(norm, cfg.image_size, cfg.resize)
    return [
        ("decoded + grayscale", gray),
        ("window (robust min-max)", win),
        (f"normalise ({cfg.normalise})", norm),
        (f"resize ({cfg.resize}, {cfg.image_size}px)", out),
    ]
