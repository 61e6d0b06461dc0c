"""DICOM before decoding: header limits, the allow-list de-identification, transfer syntaxes.

The real-stack versions (upload, job, search of the data dir) are in
tests/service/test_hostile_uploads.py; these pin the study's functions down.
"""

from __future__ import annotations

import io
import re
import struct
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

from service.gate import decode_check, format_check
from study.data.dicom import MAX_DICOM_READS, decode_dicom, deidentify_dicom, dicom_header
from study.data.preprocess import MAX_PIXELS, ImageDecodeError
from tests.dicom_factory import (
    MARK_PREFIX,
    base_dataset,
    jpeg_frames_dicom,
    jpeg_lossless,
    phi_dataset,
    to_bytes,
)


def _chest_like(shape: tuple[int, int] = (96, 128), bits: int = 12) -> np.ndarray:
    """A smooth gradient plus noise: every encoder has real work, values use all the bits."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[: shape[0], : shape[1]]
    img = (x + y) * ((1 << bits) - 1) / (shape[0] + shape[1])
    img = img + rng.normal(0, 40, shape)
    return np.clip(img, 0, (1 << bits) - 1).astype(np.uint16)


# ------------------------------------------------------------------ transfer syntaxes


def _j2k(src: bytes, _: Path) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(src))
    ds.compress(uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return to_bytes(ds)


@pytest.mark.parametrize(
    ("encode", "syntax"),
    [(jpeg_lossless, uid.JPEGLosslessSV1), (_j2k, uid.JPEG2000Lossless)],
    ids=["jpeg_lossless_1.2.840.10008.1.2.4.70", "jpeg2000_lossless"],
)
def test_compressed_dicom_decodes_to_source_pixels(tmp_path: Path, encode, syntax) -> None:
    arr = _chest_like()
    ds = base_dataset(arr, BitsStored=12, HighBit=11)
    src = to_bytes(ds)
    data = encode(src, tmp_path)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax
    plain, _ = decode_dicom(src, MAX_PIXELS)
    got, meta = decode_dicom(data, MAX_PIXELS)
    assert meta["transfer_syntax"] == syntax
    np.testing.assert_array_equal(got, plain)
    # Through the service's path: header check (API), de-identified copy, decode (worker).
    check = format_check(data)
    assert check.accepted, check.message
    stored = deidentify_dicom(data, MAX_PIXELS)
    decoded = decode_check(stored, format_check(stored))
    assert decoded.accepted, decoded.message
    np.testing.assert_array_equal(decoded.decoded.pixels, plain)
    raw = pydicom.pixels.pixel_array(pydicom.dcmread(io.BytesIO(data)), decoding_plugin="pylibjpeg")
    np.testing.assert_array_equal(raw, arr)  # pylibjpeg itself gives back the source


# ------------------------------------------------------------------ header limits


def test_multiframe_bomb_refused_from_the_header() -> None:
    """400 frames of 2048x2048: each frame under the pixel limit, the file a few MB."""
    data = jpeg_frames_dicom(400, 2048)
    assert len(data) < 30 * 2**20
    t0 = time.perf_counter()
    r = format_check(data)
    assert r.code == "too_large" and "400 frame(s)" in r.message, r.message
    assert time.perf_counter() - t0 < 5
    assert r.decoded is None


def test_burned_in_annotation_refused() -> None:
    data = to_bytes(base_dataset(_chest_like(), BurnedInAnnotation="YES"))
    r = format_check(data)
    assert not r.accepted and r.code == "burned_in_annotation"
    assert "BurnedInAnnotation YES" in r.message
    with pytest.raises(ImageDecodeError, match="burned-in"):
        deidentify_dicom(data, MAX_PIXELS)


def test_element_bomb_refused_with_bounded_work() -> None:
    """Millions of 8-byte elements would cost gigabytes of parser objects."""
    head = to_bytes(base_dataset(np.zeros((4, 4), np.uint8)))
    cut = head.index(b"\xe0\x7f\x10\x00")  # before the pixel data element
    n = 2 * MAX_DICOM_READS
    body = b"".join(struct.pack("<HH2sH", 0x0011 + 2 * (i >> 16), i & 0xFFFF, b"LO", 0)
                    for i in range(n))  # fmt: skip
    data = head[:cut] + body + head[cut:]
    t0 = time.perf_counter()
    for fn in (dicom_header, deidentify_dicom, decode_dicom):
        with pytest.raises(ImageDecodeError, match="too many elements"):
            fn(data, MAX_PIXELS)
    assert time.perf_counter() - t0 < 20


def test_frame_declaring_more_pixels_than_the_header_is_refused() -> None:
    """A JPEG frame whose own header says 30000x30000 inside a 64x64 DICOM."""
    from pydicom.encaps import encapsulate

    data = jpeg_frames_dicom(1, 64)
    ds = pydicom.dcmread(io.BytesIO(data))
    frame = bytearray(pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1))
    sof = frame.index(b"\xff\xc0")
    frame[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)
    ds.PixelData = encapsulate([bytes(frame)])
    bad = to_bytes(ds)
    assert format_check(bad).accepted  # the DICOM header itself is fine
    r = decode_check(bad, format_check(bad))
    assert r.code == "too_large" and "30000x30000" in r.message


# ------------------------------------------------------------------ de-identification


def test_deidentified_copy_keeps_only_the_allow_list() -> None:
    ds, values = phi_dataset(_chest_like().astype(np.uint16))
    data = to_bytes(ds)
    assert all(v in data for v in values) and MARK_PREFIX.encode() in data
    out = deidentify_dicom(data, MAX_PIXELS)
    assert out == deidentify_dicom(data, MAX_PIXELS)  # deterministic: content-addressed
    leaked = [v for v in values if v in out] + re.findall(rb"PHIX\d{5}", out)
    assert not leaked
    kept = pydicom.dcmread(io.BytesIO(out))
    assert kept.PatientIdentityRemoved == "YES" and not any(e.tag.is_private for e in kept)
    assert not [e for e in kept if e.tag.group & 0xFF00 in (0x5000, 0x6000)]  # curves/overlays
    assert not [e for e in kept if e.VR == "SQ"]
    assert (kept.Modality, kept.BodyPartExamined, kept.ViewPosition) == ("DX", "CHEST", "PA")
    same = decode_dicom(out, MAX_PIXELS)[0], decode_dicom(data, MAX_PIXELS)[0]
    np.testing.assert_array_equal(*same)


def test_multiframe_keeps_and_decodes_only_the_first_frame() -> None:
    frames = np.stack([_chest_like(bits=8).astype(np.uint8) + i for i in range(3)])
    data = to_bytes(base_dataset(frames))
    h = dicom_header(data, MAX_PIXELS)
    assert h.frames == 3 and h.total_samples == 3 * 96 * 128
    out = deidentify_dicom(data, MAX_PIXELS)
    assert len(out) < len(data) - 2 * 96 * 128 + 4096
    first, _ = decode_dicom(data, MAX_PIXELS)
    np.testing.assert_array_equal(first, frames[0].astype(np.float32))
    np.testing.assert_array_equal(decode_dicom(out, MAX_PIXELS)[0], first)
    enc = jpeg_frames_dicom(5, 64)
    out = pydicom.dcmread(io.BytesIO(deidentify_dicom(enc, MAX_PIXELS)))
    assert "NumberOfFrames" not in out
    assert decode_dicom(enc, MAX_PIXELS)[0].shape == (64, 64)


# ------------------------------------------------------------------ JPEG and PNG metadata


def _tagged(fmt: str, orientation: int) -> tuple[bytes, list[bytes]]:
    """A JPEG/PNG whose EXIF (and JPEG comment / PNG text chunk) names a patient."""
    from PIL import Image, PngImagePlugin

    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010E] = "CHEST OF QUACKENBUSH GRETCHEN"  # ImageDescription
    exif[0x013B] = "DR ZHIVAGO YURI"  # Artist
    im = Image.fromarray(_chest_like(bits=8).astype(np.uint8))
    buf = io.BytesIO()
    if fmt == "jpeg":
        im.save(buf, "JPEG", exif=exif, comment=b"PATIENT MUSTERMANN ERIKA")
        data = buf.getvalue() + b"TRAILING MUSTERMANN"
    else:
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "PATIENT MUSTERMANN ERIKA")
        info.add_itxt("Author", "PATIENT MUSTERMANN ERIKA")
        im.save(buf, "PNG", exif=exif, pnginfo=info)
        data = buf.getvalue() + b"TRAILING MUSTERMANN"
    return data, [b"QUACKENBUSH", b"ZHIVAGO", b"MUSTERMANN"]


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
@pytest.mark.parametrize("orientation", [1, 6])
def test_image_metadata_stripped_pixels_and_orientation_kept(fmt: str, orientation: int) -> None:
    from study.data.metadata import strip_metadata
    from study.data.preprocess import decode, exif_orientation

    data, names = _tagged(fmt, orientation)
    assert all(n in data for n in names)
    out = strip_metadata(data, fmt)
    assert not [n for n in names if n in out]
    assert exif_orientation(out) == orientation
    before, after = decode(data), decode(out)
    np.testing.assert_array_equal(after.pixels, before.pixels)
    assert after.meta == before.meta


def test_truncated_image_without_data_refused() -> None:
    from study.data.metadata import strip_metadata

    data, _ = _tagged("png", 1)
    with pytest.raises(ImageDecodeError):
        strip_metadata(data[: data.index(b"IDAT")], "png")
    jpeg, _ = _tagged("jpeg", 1)
    with pytest.raises(ImageDecodeError):
        strip_metadata(jpeg[:40], "jpeg")
