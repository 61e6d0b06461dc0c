"""DICOM for the one preprocessing module: bounded header reads, de-identification, decoding.

Three steps, each with its own bound:

* :func:`dicom_header` reads declared sizes and a few header fields, never
  pixels. It refuses, before any decoding, a file whose frames x rows x
  columns x samples exceed the pixel limit, and a file whose
  ``BurnedInAnnotation`` is ``YES`` (patient text inside the pixels).
* :func:`deidentify_dicom` keeps an allow-list: the first frame's pixel data,
  the fields needed to decode and display it, and the few safe fields
  (:data:`SAFE_FIELDS`). Every other element is dropped: names, IDs, dates,
  institutions, UIDs, descriptions, private tags, overlays, curves and
  nested sequences, whatever their tag. This is stricter than the PS3.15
  Basic Application Level Confidentiality Profile (which keeps or dummies
  attributes), and it lets the parser skip dropped elements unparsed.
* :func:`decode_dicom` decodes only the first frame (pydicom 3's
  ``pixel_array(index=0)``), through pydicom's plugins (pylibjpeg for JPEG
  Lossless, JPEG-LS and JPEG 2000).

Every parse goes through :class:`_BoundedBytes`: a file of millions of tiny
elements would otherwise cost gigabytes of parser objects (measured: 1.36 GB
of RSS for 30 MB of 8-byte elements) before any check could run.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

# Fields safe to store and log (no patient identifiers).
SAFE_FIELDS = ("Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation")
# Modalities of projection radiographs (computed, digital, direct), and the body-part
# words of a chest film: the input gate's header check and its sources share them.
XRAY_MODALITIES = frozenset({"CR", "DX", "DR"})
# BodyPartExamined is free text in practice ("PORTABLE CHEST", "THORACIC", "TORAX",
# "BRUSTKORB"...): a value holding any of these is a chest; an empty or non-committal
# value leaves the decision to the pixels.
CHEST_BODY_PARTS = ("CHEST", "THORA", "TORA", "LUNG", "TORSO", "CXR", "BRUST", "PECHO")
CHEST_BODY_PARTS += ("POITRINE",)
UNKNOWN_BODY_PARTS = frozenset({"", "UNKNOWN", "OTHER", "NONE", "N/A", "NA", "-"})
# Most reads one parse may make (about 2-3 per element): bounds the parser's memory and
# time (a chest X-ray has a few hundred elements; enhanced multi-frame files some thousands).
MAX_DICOM_READS = 200_000
# A kept LUT sequence larger than this is dropped unparsed (a 16-bit LUT is 128 KiB).
MAX_LUT_SEQUENCE_BYTES = 1 << 20
# What a de-identified file keeps besides the pixel data (keywords; sequences are rebuilt).
_PIXEL_FIELDS = (
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration",
    "RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth",
    "VOILUTFunction", "SOPClassUID", "NumberOfFrames", "BurnedInAnnotation",
)  # fmt: skip
_LUT_SEQUENCES = {"ModalityLUTSequence": "ModalityLUTType", "VOILUTSequence": None}
_LUT_ITEM = ("LUTDescriptor", "LUTData")
_CODE_STRING = re.compile(r"^[A-Z0-9 _]{0,16}$")
_PIXEL_DATA = 0x7FE00010
_EXTENDED_OFFSETS = (0x7FE00001, 0x7FE00002)
DEIDENTIFICATION_METHOD = "pneumoscope allow-list: first frame and image pixel module only"


class _BoundedBytes(io.BytesIO):
    """An in-memory file that refuses to be read more than ``MAX_DICOM_READS`` times."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads += 1
        if self.reads > MAX_DICOM_READS:
            from study.data.preprocess import ImageDecodeError

            raise ImageDecodeError(
                f"DICOM has too many elements (over {MAX_DICOM_READS:,} parser reads)"
            )
        return super().read(size)


@dataclass(frozen=True)
class DicomHeader:
    """Declared sizes and the safe fields: what is checked before any pixel is decoded."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    transfer_syntax: str
    burned_in: str
    meta: dict[str, Any]

    @property
    def total_samples(self) -> int:
        return self.frames * self.rows * self.columns * self.samples


def looks_like_raw_dicom(data: bytes) -> bool:
    """ACR-NEMA style files have no preamble: a group 0x0008 tag first is a good sign."""
    return len(data) > 8 and data[:2] == b"\x08\x00" and data[3:4] == b"\x00"


def _read(data: bytes, pixels: bool, tags: list[str] | None = None) -> Any:
    """A bounded parse; without ``pixels`` the pixel data is skipped unread."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from study.data.preprocess import ImageDecodeError

    keep = None if tags is None else [*tags, *(["PixelData"] if pixels else [])]
    try:
        ds = pydicom.dcmread(
            _BoundedBytes(data), force=True, stop_before_pixels=not pixels, specific_tags=keep
        )
    except ImageDecodeError:
        raise
    except RecursionError as exc:
        raise ImageDecodeError("unreadable DICOM: sequences nested too deeply") from exc
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ImageDecodeError(f"unreadable DICOM: {exc}") from exc
    except (NotImplementedError, AttributeError, IndexError, struct.error) as exc:
        # Untrusted bytes: pydicom also raises these for a damaged header (e.g. an
        # unknown value representation); every one is an unreadable DICOM, never a 500.
        raise ImageDecodeError(f"unreadable DICOM: {exc}") from exc
    _ensure_transfer_syntax(ds)
    return ds


def _int(ds: Any, name: str, default: int = 0) -> int:
    try:
        return int(getattr(ds, name, default) or default)
    except (TypeError, ValueError):
        return default


def header_of(ds: Any) -> DicomHeader:
    """The declared sizes and safe fields of a parsed dataset."""
    meta: dict[str, Any] = {k: str(getattr(ds, k, "") or "") for k in SAFE_FIELDS}
    meta["bit_depth"] = _int(ds, "BitsStored")
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    meta["transfer_syntax"] = syntax
    return DicomHeader(
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        frames=max(1, _int(ds, "NumberOfFrames", 1)),
        samples=max(1, _int(ds, "SamplesPerPixel", 1)),
        bits_allocated=_int(ds, "BitsAllocated"),
        transfer_syntax=syntax,
        burned_in=str(getattr(ds, "BurnedInAnnotation", "") or "").strip().upper(),
        meta=meta,
    )


def check_header(h: DicomHeader, max_pixels: int) -> None:
    """Refuse, from declared fields only, what must never be decoded or stored."""
    from study.data.preprocess import ImageDecodeError

    if h.burned_in == "YES":
        raise ImageDecodeError(
            "burned-in annotation: the DICOM header says patient text is burned into the "
            "pixels (BurnedInAnnotation YES); such images are refused, as their pixels may "
            "identify the patient"
        )
    if h.rows <= 0 or h.columns <= 0:
        raise ImageDecodeError("DICOM declares no image size (Rows/Columns)")
    if h.total_samples > max_pixels:
        raise ImageDecodeError(
            f"DICOM is {h.frames} frame(s) of {h.columns}x{h.rows}x{h.samples} samples "
            f"({h.total_samples:,}), over the {max_pixels:,} pixel limit"
        )


def dicom_header(data: bytes, max_pixels: int) -> DicomHeader:
    """The header only (pixels skipped unread), checked against the limits."""
    h = header_of(_read(data, pixels=False, tags=[*_PIXEL_FIELDS, *SAFE_FIELDS]))
    check_header(h, max_pixels)
    return h


def decode_dicom(data: bytes, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    """First frame's pixels, modality LUT and VOI LUT/windowing applied, MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    from study.data.preprocess import ImageDecodeError

    ds = _read(data, pixels=True)
    h = header_of(ds)
    check_header(h, max_pixels)
    meta = dict(h.meta)
    if "PixelData" not in ds:
        raise ImageDecodeError("DICOM has no pixel data")
    _check_frame_size(ds, h)
    try:
        arr = pixel_array(ds, index=0, decoding_plugin=decoding_plugin(h.transfer_syntax))
    except Exception as exc:  # pydicom raises many types for missing codecs
        raise ImageDecodeError(
            f"DICOM transfer syntax {meta['transfer_syntax'] or 'unknown'} cannot be decoded "
            f"here ({type(exc).__name__})"
        ) from exc
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds) if arr.ndim == 2 else arr
    arr = np.asarray(arr, np.float32)
    if meta["PhotometricInterpretation"] == "MONOCHROME1":
        arr = arr.max() - arr
    return arr, meta


def decoding_plugin(transfer_syntax: str) -> str:
    """``pylibjpeg`` wherever it can decode the syntax, else pydicom's choice (""): the same
    decoder whatever else is installed (python-gdcm, a test-only encoder, comes first
    in pydicom's own order)."""
    from pydicom.pixels import get_decoder

    try:
        plugins = get_decoder(transfer_syntax).available_plugins
    except (NotImplementedError, ValueError, KeyError):
        return ""
    return "pylibjpeg" if "pylibjpeg" in plugins else ""


def _check_frame_size(ds: Any, h: DicomHeader) -> None:
    """A compressed frame declares its own size; one larger than the header's is a bomb."""
    from pydicom.encaps import get_frame
    from pydicom.uid import UID

    from study.data.preprocess import ImageDecodeError, header_size

    if not UID(h.transfer_syntax).is_encapsulated:
        return
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=h.frames)
    except (ValueError, IndexError, KeyError) as exc:
        raise ImageDecodeError(f"DICOM frames cannot be split: {exc}") from exc
    size = None
    if frame[:2] == b"\xff\xd8":
        size = header_size(frame, "jpeg")
    elif frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 16:  # J2K codestream SIZ
        size = int.from_bytes(frame[8:12], "big"), int.from_bytes(frame[12:16], "big")
    if size is not None and size[0] * size[1] > h.rows * h.columns:
        raise ImageDecodeError(
            f"DICOM frame declares {size[0]}x{size[1]} pixels but the header {h.columns}x"
            f"{h.rows}: over the pixel limit"
        )


def deidentify_dicom(data: bytes, max_pixels: int) -> bytes:
    """A new DICOM file holding only the allow-list (see the module doc); deterministic, so
    the same upload always gives the same bytes (and the same content hash)."""
    from pydicom.dataset import Dataset

    from study.data.preprocess import ImageDecodeError

    src = _read(data, pixels=True, tags=[*_PIXEL_FIELDS, *SAFE_FIELDS, *_LUT_SEQUENCES])
    h = header_of(src)
    check_header(h, max_pixels)
    if _PIXEL_DATA not in src:
        raise ImageDecodeError("DICOM has no pixel data")
    out = Dataset()
    for name in _PIXEL_FIELDS:
        if name in src and name not in ("NumberOfFrames", "BurnedInAnnotation"):
            out[name] = src[name]
    for name in SAFE_FIELDS[:3]:
        value = str(getattr(src, name, "") or "").strip().upper()
        if value and _CODE_STRING.match(value):
            setattr(out, name, value)
    _copy_luts(src, out)
    pixels, vr = _first_frame(src, h), src[_PIXEL_DATA].VR
    out.add_new(_PIXEL_DATA, vr, pixels)
    if h.burned_in == "NO":
        out.BurnedInAnnotation = "NO"
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = DEIDENTIFICATION_METHOD
    return _write(out, h.transfer_syntax, pixels)


def _copy_luts(src: Any, out: Any) -> None:
    """Modality/VOI LUT sequences, rebuilt with only their LUT fields (small ones only)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    for seq_name, extra in _LUT_SEQUENCES.items():
        raw = src.get_item(seq_name) if seq_name in src else None
        if raw is None or (getattr(raw, "length", 0) or 0) > MAX_LUT_SEQUENCE_BYTES:
            continue
        items = []
        for item in getattr(src, seq_name)[:1]:
            new = Dataset()
            for name in (*_LUT_ITEM, *([extra] if extra else [])):
                if name in item:
                    new[name] = item[name]
            items.append(new)
        setattr(out, seq_name, Sequence(items))


def _first_frame(src: Any, h: DicomHeader) -> bytes:
    """The first frame's stored bytes (native or encapsulated), never decoded."""
    from pydicom.encaps import encapsulate, get_frame
    from pydicom.uid import UID

    from study.data.preprocess import ImageDecodeError

    data = src[_PIXEL_DATA].value
    if h.frames == 1:
        return data
    if UID(h.transfer_syntax).is_encapsulated:
        offsets = None
        if all(t in src for t in _EXTENDED_OFFSETS):
            offsets = (src[_EXTENDED_OFFSETS[0]].value, src[_EXTENDED_OFFSETS[1]].value)
        try:
            frame = get_frame(data, 0, extended_offsets=offsets, number_of_frames=h.frames)
        except (ValueError, IndexError, KeyError) as exc:
            raise ImageDecodeError(f"DICOM frames cannot be split: {exc}") from exc
        return encapsulate([frame])
    if h.bits_allocated % 8:
        raise ImageDecodeError("multi-frame DICOM with bit-packed pixels is not supported")
    size = h.rows * h.columns * h.samples * h.bits_allocated // 8
    if len(data) < size:
        raise ImageDecodeError("DICOM pixel data is shorter than its declared size")
    return data[:size]


def _write(ds: Any, transfer_syntax: str, pixels: bytes) -> bytes:
    """Fresh file meta (no source AE title, no original UIDs) and a content-derived UID."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_ROOT_UID, UID, SecondaryCaptureImageStorage, generate_uid

    head = repr(sorted((k, str(v.value)[:64]) for k, v in ds.items() if k != _PIXEL_DATA))
    entropy = [hashlib.sha256(pixels).hexdigest(), head, transfer_syntax]
    ds.SOPClassUID = getattr(ds, "SOPClassUID", None) or SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(PYDICOM_ROOT_UID, entropy_srcs=entropy)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _ensure_transfer_syntax(ds: Any) -> None:
    """ACR-NEMA files (no preamble, no file meta) lack a TransferSyntaxUID, and pydicom
    then refuses ``pixel_array``. Such files are always uncompressed, so the syntax is the
    encoding pydicom actually parsed them with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and getattr(file_meta, "TransferSyntaxUID", None):
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit or implicit is None:
        uid = ImplicitVRLittleEndian
    else:
        uid = ExplicitVRLittleEndian if little or little is None else ExplicitVRBigEndian
    if file_meta is None:
        ds.file_meta = file_meta = FileMetaDataset()
    file_meta.TransferSyntaxUID = uid
