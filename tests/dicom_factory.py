"""DICOM files built in the tests: plain, compressed, multi-frame, carrying identifiers.

Everything is made here from numpy arrays, so no test depends on a sample
file's header. JPEG Lossless (1.2.840.10008.1.2.4.70) is encoded with
python-gdcm: pydicom 3 has no encoder for it and neither pylibjpeg plugin
encodes JPEG (pylibjpeg-libjpeg only decodes; pylibjpeg-openjpeg encodes
JPEG 2000 only).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np

# Human-readable identifiers, one per well-known PS3.15 basic-profile attribute.
NAMED_PHI = {
    "PatientName": "MUSTERMANN^ERIKA",
    "PatientID": "PID8151234",
    "PatientBirthDate": "19870603",
    "PatientAddress": "12 ELM STREET SPRINGFIELD",
    "OtherPatientIDs": "OPID7766",
    "InstitutionName": "ST ELSEWHERE HOSPITAL",
    "InstitutionAddress": "1 HOSPITAL ROAD BOSTON",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "PerformingPhysicianName": "QUINN^MICHAELA",
    "OperatorsName": "NIGHTINGALE^FLORENCE",
    "AccessionNumber": "ACC99812345",
    "StudyID": "STUDY4455",
    "StudyDate": "20190314",
    "StudyTime": "101112.654321",
    "SeriesDate": "20190314",
    "AcquisitionDateTime": "20190314101112",
    "StudyDescription": "CHEST FOR MUSTERMANN",
    "ImageComments": "PATIENT IS ERIKA",
    "StationName": "XRAYROOM7",
    "DeviceSerialNumber": "SN55443322",
    "StudyInstanceUID": "1.2.3.999999.1",
    "SeriesInstanceUID": "1.2.3.999999.2",
    "SOPInstanceUID": "1.2.3.999999.3",
}
PRIVATE_VALUE = "PRIVATEPHI1"
OVERLAY_MARK = b"OVERLAYPHI"
NESTED_NAME = "NESTED^PHIPERSON"
MARK_PREFIX = "PHIX"  # + 5 digits: every other string attribute of the dictionary
_MARK_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}


def base_dataset(pixels: np.ndarray, syntax: str | None = None, **fields: object):
    """An uncompressed single- or multi-frame DX dataset holding ``pixels`` (uint8/uint16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    frames = pixels if pixels.ndim == 3 else pixels[None]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = frames.shape[1:3]
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    for k, v in fields.items():
        setattr(ds, k, v)
    return ds


def to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid-VR warnings for the deliberate markers
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def jpeg_lossless(src: bytes, tmp: Path) -> bytes:
    """The same image re-encoded as JPEG Lossless SV1 (1.2.840.10008.1.2.4.70) by GDCM."""
    import gdcm

    inp, out = tmp / "in.dcm", tmp / "jpeg_lossless.dcm"
    inp.write_bytes(src)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(inp))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(out))
    assert writer.Write()
    return out.read_bytes()


def jpeg_frames_dicom(frames: int, side: int) -> bytes:
    """A multi-frame JPEG Baseline DICOM of flat frames: hundreds of megapixels in a few MB."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ok, jpg = cv2.imencode(".jpg", np.full((side, side), 128, np.uint8))
    assert ok
    ds = base_dataset(np.zeros((1, 8, 8), np.uint8), JPEGBaseline8Bit)
    ds.Rows = ds.Columns = side
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([jpg.tobytes()] * frames)
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def phi_dataset(pixels: np.ndarray) -> tuple[object, list[bytes]]:
    """A DICOM with an identifier in every string attribute of pydicom's dictionary that
    the service does not keep, plus the named ones, a private tag, an overlay and a nested
    sequence. Returns the dataset and every value that must never be found at rest."""
    from pydicom.datadict import DicomDictionary
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from study.data.dicom import _LUT_ITEM, _LUT_SEQUENCES, _PIXEL_FIELDS, SAFE_FIELDS

    ds = base_dataset(pixels)
    kept = {*_PIXEL_FIELDS, *SAFE_FIELDS, *_LUT_SEQUENCES, *_LUT_ITEM, "SpecificCharacterSet"}
    n = 0
    for tag, (vr, _vm, _name, _retired, keyword) in sorted(DicomDictionary.items()):
        group = tag >> 16
        if vr not in _MARK_VRS or keyword in kept or group in (0x0000, 0x0002, 0xFFFE):
            continue
        ds.add_new(tag, vr, f"{MARK_PREFIX}{n:05d}")
        n += 1
    for k, v in NAMED_PHI.items():
        setattr(ds, k, v)
    ds.private_block(0x0011, "ACME PHI", create=True).add_new(0x01, "LO", PRIVATE_VALUE)
    ds.add_new(0x60000010, "US", 16)
    ds.add_new(0x60000011, "US", 16)
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000022, "LO", "OVERLAYDESCPHI")
    ds.add_new(0x60003000, "OW", OVERLAY_MARK * 4)
    item = Dataset()
    item.PatientName = NESTED_NAME
    ds.ReferencedPatientSequence = Sequence([item])
    values = [v.encode() for v in NAMED_PHI.values()]
    values += [PRIVATE_VALUE.encode(), OVERLAY_MARK, b"OVERLAYDESCPHI", NESTED_NAME.encode()]
    return ds, values
