"""Grey pictures of an X-ray for people: the reviewer page, the report's galleries and figures.

One helper, so every picture a human sees is made the same way: decode (any
format the study reads, DICOM included), collapse to grey, window to 8 bits
(:mod:`study.data.preprocess` steps 1-3), then shrink with the aspect kept.
A picture for the eye, never a model input (that is ``preprocess.prepare``).
"""

from __future__ import annotations

import cv2
import numpy as np

from study.data.preprocess import MAX_PIXELS, ImageDecodeError, decode, to_grayscale, window


def grey_preview(
    image: bytes | np.ndarray,
    max_side: int | None = None,
    width: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray | None:
    """Windowed uint8 grey image of raw bytes or decoded pixels; None if it cannot be read.

    ``max_side`` shrinks (never enlarges) so the longer side fits; ``width``
    scales to exactly that width (gallery columns line up). Neither: full size.
    """
    try:
        pixels = decode(image, max_pixels=max_pixels).pixels if isinstance(image, bytes) else image
        gray = window(to_grayscale(pixels))
    except (ImageDecodeError, ValueError, cv2.error):
        return None
    h, w = gray.shape[:2]
    if width is not None:
        size = (width, max(1, round(h * width / w)))
    elif max_side is not None and max(h, w) > max_side:
        f = max_side / max(h, w)
        size = (max(1, round(w * f)), max(1, round(h * f)))
    else:
        return gray
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
