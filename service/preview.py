"""A browser-viewable grey PNG of any upload (DICOM included), for the reviewer page.

Uses study.data.preprocess's decode, grayscale and window steps only: a picture
for a human, not a model input.
"""

from __future__ import annotations

import cv2

from study.data.preprocess import ImageDecodeError, decode, to_grayscale, window

PREVIEW_SIDE = 1024


def preview_png(data: bytes, max_pixels: int, side: int = PREVIEW_SIDE) -> bytes | None:
    """None when the bytes cannot be decoded (the gate will have said why)."""
    try:
        gray = window(to_grayscale(decode(data, max_pixels=max_pixels).pixels))
    except (ImageDecodeError, ValueError, cv2.error):
        return None
    h, w = gray.shape[:2]
    f = side / max(h, w)
    if f < 1.0:
        gray = cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))), cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", gray)
    return buf.tobytes() if ok else None
