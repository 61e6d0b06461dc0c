"""DICOM decoding for the one preprocessing module.

Only non-identifying fields leave this module: patient names, IDs, dates
of birth and institutions are never read into the returned metadata.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

# Fields safe to store and log (no patient identifiers).
SAFE_FIELDS = ("Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation")


def looks_like_raw_dicom(data: bytes) -> bool:
    """ACR-NEMA style files have no preamble: a group 0x0008 tag first is a good sign."""
    return len(data) > 8 and data[:2] == b"\x08\x00" and data[3:4] == b"\x00"


def dicom_header(data: bytes) -> dict[str, str]:
    """The safe header fields, read without touching the pixel data (the gate refuses CT, MR,
    ultrasound... on these alone). Empty when the header cannot be parsed."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        return {k: str(getattr(ds, k, "") or "") for k in SAFE_FIELDS}
    except Exception:  # a damaged header: decoding will say why
        return {}


def decode_dicom(data: bytes, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Pixels with modality LUT and VOI LUT/windowing applied, MONOCHROME1 inverted."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from study.data.preprocess import ImageDecodeError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ImageDecodeError(f"unreadable DICOM: {exc}") from exc
    meta: dict[str, Any] = {k: str(getattr(ds, k, "") or "") for k in SAFE_FIELDS}
    if "PixelData" not in ds:
        raise ImageDecodeError("DICOM has no pixel data")
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows * cols > max_pixels:
        raise ImageDecodeError(f"DICOM is {cols}x{rows}, over the {max_pixels} pixel limit")
    meta["bit_depth"] = int(getattr(ds, "BitsStored", 0) or 0)
    _ensure_transfer_syntax(ds)
    meta["transfer_syntax"] = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing codecs
        raise ImageDecodeError(
            f"DICOM transfer syntax {meta['transfer_syntax'] or 'unknown'} cannot be decoded "
            f"here ({type(exc).__name__})"
        ) from exc
    if arr.ndim == 3 and meta["PhotometricInterpretation"] not in ("RGB", "YBR_FULL", "YBR_RCT"):
        arr = arr[0]  # multi-frame: first frame
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds) if arr.ndim == 2 else arr
    arr = np.asarray(arr, np.float32)
    if meta["PhotometricInterpretation"] == "MONOCHROME1":
        arr = arr.max() - arr
    return arr, meta


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
