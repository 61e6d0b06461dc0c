"""JPEG and PNG without their metadata: the pixels' bytes kept as sent, never re-encoded.

EXIF (camera, dates, free-text descriptions, GPS), XMP, JPEG comments, PNG text
chunks and anything after the image's end can carry a patient's name. Both
functions keep an allow-list of the segments or chunks that decoding needs
and drop the rest, without decoding a pixel; the EXIF orientation, which the
decoder applies, is kept as a one-tag EXIF block (Pillow builds it). The
decoded pixels are unchanged.
"""

from __future__ import annotations

import struct
import zlib

# JPEG markers kept before the first scan: JFIF (APP0), Adobe colour transform (APP14),
# tables, restart interval and frame headers. Everything else (APP1-13, APP15, COM) goes.
_JPEG_KEEP = {0xE0, 0xEE, 0xDB, 0xC4, 0xCC, 0xDD} | (set(range(0xC0, 0xD0)) - {0xC4, 0xC8})
_SOS, _EOI = 0xDA, b"\xff\xd9"
# PNG chunks kept: the image and the chunks that change how its samples are read.
_PNG_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _orientation_exif(orientation: int) -> bytes:
    """``Exif\\0\\0`` + a TIFF block holding only the orientation tag."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def strip_jpeg(data: bytes, orientation: int = 1) -> bytes:
    """SOI, the kept header segments, a one-tag EXIF when rotated, then the scans to EOI."""
    from study.data.preprocess import ImageDecodeError

    out, i = [b"\xff\xd8"], 2
    if orientation != 1:
        app1 = _orientation_exif(orientation)
        out.append(b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1)
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ImageDecodeError("corrupt JPEG: expected a marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == _SOS:
            end = data.find(_EOI, i)
            return b"".join(out) + data[i : (end + 2 if end >= 0 else len(data))]
        if marker in _JPEG_KEEP:
            out.append(data[i : i + 2 + length])
        i += 2 + length
    raise ImageDecodeError("corrupt or truncated JPEG: no image data")


def strip_png(data: bytes, orientation: int = 1) -> bytes:
    """The signature, the kept chunks, an orientation-only eXIf when rotated; nothing after
    IEND."""
    from study.data.preprocess import ImageDecodeError

    out, i = [_PNG_MAGIC], len(_PNG_MAGIC)
    while i + 12 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        chunk = data[i : i + 12 + length]
        if len(chunk) < 12 + length:
            break
        if kind in _PNG_KEEP:
            out.append(chunk)
        if kind == b"IHDR" and orientation != 1:
            tiff = _orientation_exif(orientation)[6:]  # PNG's eXIf holds the TIFF block only
            crc = struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
            out.append(struct.pack(">I", len(tiff)) + b"eXIf" + tiff + crc)
        if kind == b"IEND":
            return b"".join(out)
        i += 12 + length
    raise ImageDecodeError("corrupt or truncated PNG: no IEND chunk")


def strip_metadata(data: bytes, fmt: str) -> bytes:
    """JPEG/PNG without metadata (see the module doc); other formats unchanged."""
    from study.data.preprocess import exif_orientation

    if fmt == "jpeg":
        return strip_jpeg(data, exif_orientation(data))
    if fmt == "png":
        return strip_png(data, exif_orientation(data))
    return data
