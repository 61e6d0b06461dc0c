"""A browser-viewable grey PNG of any upload (DICOM included), for the reviewer page.

The picture itself is the study's one grey preview (``study.serving.grey_preview``):
decoded, grey, windowed, shrunk. A picture for a human, not a model input.
"""

from __future__ import annotations

import cv2

from study.serving import grey_preview

PREVIEW_SIDE = 1024


def preview_png(data: bytes, max_pixels: int, side: int = PREVIEW_SIDE) -> bytes | None:
    """None when the bytes cannot be decoded (the gate will have said why)."""
    gray = grey_preview(data, max_side=side, max_pixels=max_pixels)
    if gray is None:
        return None
    ok, buf = cv2.imencode(".png", gray)
    return buf.tobytes() if ok else None
