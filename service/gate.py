"""Input gate: "is this a usable chest X-ray?", in four layers, each with its own code.

1. format   ``not_an_image`` / ``unsupported_format`` / ``too_large`` /
   ``burned_in_annotation``: JPEG, PNG or DICOM, byte and pixel limits
   (Settings.max_upload_bytes / max_pixels) checked from the headers before any
   pixel is decoded (:func:`format_check`, the API's only check), then the one
   frame used is decoded through the study's decode (:func:`decode_check`, worker).
   A DICOM whose header says CT, MR, US, NM, PT, XA... (or a body part other than
   the chest) is refused as ``not_chest_xray`` from its header, before its pixels are read.
2. X-ray    ``not_xray``: colour, white background, edge density, fine detail, and
   the learned probability that it is a radiograph at all (photos, documents, MRI, CT
   and ultrasound are not).
3. chest    ``not_chest_xray``: the learned chest detector on ImageNet
   EfficientNet-Lite0 features (Mahalanobis distance and/or classifier probability,
   as chosen on calibration data); a film that looks like a rotated chest X-ray is
   told to upload it upright.
4. quality  ``low_quality``: resolution, blur, clipping and contrast.

Every check is computed and reported with its threshold; the code is that of
the first layer that fails, and the message names the failing check in plain
words. The fitted gate (study.gate, via study.serving) lives in
``results/<study>/gate`` beside the winner; it is fitted by
``python run_study.py gate fit`` and only loaded here: no gate, no service.

CLI::

    python -m service.gate [--gate DIR] FILE...   # one JSON line per file
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import cv2

from service.settings import Settings
from study.serving import (
    CHEST_BODY_PARTS,
    SAFE_FIELDS,
    UNKNOWN_BODY_PARTS,
    XRAY_MODALITIES,
    Decoded,
    GateModel,
    GateUnavailableError,
    ImageDecodeError,
    compute_features,
    decode,
    dicom_header,
    failing_layer,
    gate_check,
    header_size,
    load_gate,
    sniff_format,
    to_grayscale,
)

log = logging.getLogger(__name__)


class Refusal(StrEnum):
    """The gate's refusal codes, one per layer (format has four); stored and sent as strings."""

    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_LARGE = "too_large"
    BURNED_IN_ANNOTATION = "burned_in_annotation"
    NOT_XRAY = "not_xray"
    NOT_CHEST_XRAY = "not_chest_xray"
    LOW_QUALITY = "low_quality"


# DICOM: modalities other than radiographs (XRAY_MODALITIES) are refused on the header alone.
UNKNOWN_MODALITIES = {"", "OT", "SC"}  # "other"/secondary capture: let the pixels decide
MODALITY_NAMES = {
    "CT": "a CT scan",
    "MR": "an MRI scan",
    "US": "an ultrasound image",
    "NM": "a nuclear medicine image",
    "PT": "a PET scan",
    "MG": "a mammogram",
    "XA": "an angiogram",
    "RF": "a fluoroscopy image",
    "IO": "a dental X-ray",
    "PX": "a dental panoramic X-ray",
    "OP": "an eye photograph",
    "SM": "a microscopy slide",
    "ES": "an endoscopy image",
}
SAFE_META = SAFE_FIELDS + ("transfer_syntax", "bit_depth")

# Other image containers: recognised only to say "unsupported" instead of "not an image".
_OTHER_MAGIC = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"%PDF", "PDF"),
)


def supported_name(uid: str) -> str:
    """A transfer syntax's name for messages, or its UID when unknown."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else "unknown"
    return name if name and name != uid else (uid or "unknown")


@functools.cache
def supported_transfer_syntaxes() -> dict[str, str]:
    """DICOM transfer syntaxes this installation can decode (UID -> name).

    With the pinned packages: uncompressed (implicit/explicit VR, little/big
    endian, deflated), RLE Lossless, JPEG Baseline/Extended/Lossless, JPEG-LS
    (pylibjpeg-libjpeg), JPEG 2000 and HTJ2K (pylibjpeg-openjpeg). Any other
    encoding gets ``unsupported_format`` from the header, before decoding.
    """
    from pydicom import uid as u
    from pydicom.pixels import get_decoder

    out: dict[str, str] = {}
    for t in sorted(u.AllTransferSyntaxes):
        try:
            if get_decoder(t).is_available:
                out[str(t)] = t.name
        except (NotImplementedError, ValueError, KeyError):
            continue
    return out


@dataclass
class GateResult:
    """The gate's verdict. ``checks`` holds every score, its threshold and pass/fail."""

    accepted: bool
    code: Refusal | None
    message: str
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    decoded: Decoded | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "code": self.code,
            "message": self.message,
            "checks": self.checks,
            "meta": self.meta,
        }


_check = gate_check


def _reject(code: Refusal, message: str, checks: dict, **kw: Any) -> GateResult:
    return GateResult(False, code, message, checks, **kw)


# ----------------------------------------------------------------------------- format layer


def _unknown_format(data: bytes, checks: dict) -> GateResult:
    """Not JPEG, PNG or DICOM: name a known other container, else 'not an image'."""
    other = next((name for magic, name in _OTHER_MAGIC if data.startswith(magic)), None)
    checks["format"] = _check(other or "unknown", "jpeg|png|dicom", "in", False, "format")
    if other:
        return _reject(
            Refusal.UNSUPPORTED_FORMAT,
            f"this is a {other} file; please upload a JPEG, PNG or DICOM chest X-ray",
            checks,
        )
    return _reject(
        Refusal.NOT_AN_IMAGE, "this file is not an image (expected JPEG, PNG or DICOM)", checks
    )


def _declared_size(data: bytes, fmt: str, max_pixels: int, checks: dict) -> GateResult | None:
    """JPEG/PNG: refuse from the header's declared size, before any pixel is decoded."""
    try:
        w, h = header_size(data, fmt)
    except ImageDecodeError as exc:
        return _reject(Refusal.NOT_AN_IMAGE, f"the {fmt.upper()} file is damaged: {exc}", checks)
    ok = w * h <= max_pixels
    checks["pixels"] = _check(w * h, max_pixels, "max", ok, "format")
    if ok:
        return None
    return _reject(
        Refusal.TOO_LARGE,
        f"the image declares {w}x{h} pixels, over the {max_pixels:,} pixel limit",
        checks,
    )


def format_check(
    data: bytes, settings: Settings | None = None, dicom_header_first: bool = False
) -> GateResult:
    """Layer 1 from headers only: magic bytes, byte limit, declared sizes and DICOM header
    fields. Never decodes a pixel (the API runs it on every upload); never raises. With
    ``dicom_header_first`` a DICOM header that rules out a chest X-ray refuses the file."""
    s = settings or Settings()
    checks: dict[str, dict[str, Any]] = {}
    n, limit = len(data), s.max_upload_bytes
    checks["bytes"] = _check(n, limit, "max", n <= limit, "format")
    if n > limit:
        return _reject(
            Refusal.TOO_LARGE,
            f"the file is {n / 2**20:.1f} MiB; the limit is {limit / 2**20:.0f} MiB",
            checks,
        )
    fmt = sniff_format(data) if n else None
    if fmt is None:
        return _unknown_format(data, checks)
    checks["format"] = _check(fmt, "jpeg|png|dicom", "in", True, "format")
    if fmt == "dicom":
        header = _dicom_header_check(data, s, checks)
        if header.accepted and dicom_header_first:
            return _header_refusal(header.meta, checks) or header
        return header
    refused = _declared_size(data, fmt, s.max_pixels, checks)
    if refused is not None:
        return refused
    w, h = header_size(data, fmt)
    return GateResult(True, None, "ok", checks, None, {"format": fmt, "width": w, "height": h})


def _dicom_header_check(data: bytes, s: Settings, checks: dict) -> GateResult:
    """DICOM header fields: frames x rows x columns x samples, burned-in text, encoding."""
    try:
        h = dicom_header(data, s.max_pixels)
    except ImageDecodeError as exc:
        return _decode_failure("dicom", str(exc), checks, s)
    checks["pixels"] = _check(h.total_samples, s.max_pixels, "max", True, "format")
    supported = supported_transfer_syntaxes()
    if h.transfer_syntax not in supported:
        name = supported_name(h.transfer_syntax)
        why = f"DICOM transfer syntax {name} cannot be decoded here"
        return _decode_failure("dicom", why, checks, s)
    meta = {"format": "dicom", "width": h.columns, "height": h.rows}
    meta |= {k: h.meta[k] for k in SAFE_META if k in h.meta}
    return GateResult(True, None, "ok", checks, None, meta)


def decode_check(data: bytes, header: GateResult, settings: Settings | None = None) -> GateResult:
    """Layer 1's decoding step (worker only): the one frame that is used, within the limits."""
    s = settings or Settings()
    checks, fmt = dict(header.checks), str(header.meta.get("format", "image"))
    try:
        decoded = decode(data, max_pixels=s.max_pixels)
        to_grayscale(decoded.pixels)  # shape sanity: refuses odd channel layouts
    except ImageDecodeError as exc:
        return _decode_failure(fmt, str(exc), checks, s)
    except Exception as exc:  # a broken file must never crash the service
        return _reject(
            Refusal.NOT_AN_IMAGE,
            f"the {fmt.upper()} file could not be read ({type(exc).__name__})",
            checks,
        )
    h, w = decoded.pixels.shape[:2]
    if "pixels" not in checks:
        checks["pixels"] = _check(h * w, s.max_pixels, "max", True, "format")
    meta = {"format": fmt, "width": int(w), "height": int(h)}
    meta |= {k: decoded.meta[k] for k in SAFE_META if k in decoded.meta}
    return GateResult(True, None, "ok", checks, decoded, meta)


def _decode_failure(fmt: str, reason: str, checks: dict, s: Settings) -> GateResult:
    """Map decode()'s specific reasons onto the format codes."""
    if "burned-in annotation" in reason:
        checks["burned_in_annotation"] = _check("YES", "NO", "eq", False, "format")
        return _reject(Refusal.BURNED_IN_ANNOTATION, reason, checks)
    if "pixel limit" in reason:
        checks["pixels"] = _check(None, s.max_pixels, "max", False, "format")
        return _reject(Refusal.TOO_LARGE, f"the image is too large: {reason}", checks)
    if "transfer syntax" in reason or "unexpected pixel array shape" in reason:
        checks["decodable"] = _check(False, True, "eq", False, "format")
        supported = ", ".join(supported_transfer_syntaxes().values())
        return _reject(
            Refusal.UNSUPPORTED_FORMAT,
            f"{reason}. Supported DICOM encodings here: {supported}",
            checks,
        )
    checks["decodable"] = _check(False, True, "eq", False, "format")
    return _reject(
        Refusal.NOT_AN_IMAGE, f"the {fmt.upper()} file could not be decoded: {reason}", checks
    )


# ----------------------------------------------------------------------------- content layers

_XRAY_WORDS = {
    "colour_fraction": "this looks like a colour photo or graphic, not an X-ray "
    "({v:.0%} of the pixels are clearly coloured; X-rays are grey)",
    "white_fraction": "this looks like a document, chart or screenshot, not an X-ray "
    "({v:.0%} of the image is white background)",
    "edge_density": "this looks like text, a chart or a photo, not an X-ray "
    "(far more sharp edges than an X-ray has)",
    "fine_detail": "this looks like a photo or a screenshot, not an X-ray "
    "(much more fine detail than an X-ray has)",
    "xray_probability": "this does not look like an X-ray film: it looks like a photo, a "
    "document or screenshot, or another kind of scan (MRI, CT, ultrasound) "
    "(X-ray probability {v:.0%})",
}
_QUALITY_WORDS = {
    "min_side": "the image is too small ({v:.0f} px on its shortest side; need at least {t:.0f})",
    "sharpness": "the image is too blurred to read",
    "clipped_white": "the image is over-exposed ({v:.0%} of the pixels are pure white)",
    "clipped_black": "the image is under-exposed ({v:.0%} of the pixels are pure black)",
    "contrast": "the image has too little contrast to read",
}
ROTATED = "rotated_chest"
# The refusal code of each content layer (study.gate's failing_layer names the layer).
LAYER_CODES = {
    "xray": Refusal.NOT_XRAY,
    "chest": Refusal.NOT_CHEST_XRAY,
    "quality": Refusal.LOW_QUALITY,
}


def _dicom_checks(meta: dict[str, Any], checks: dict) -> str | None:
    """Modality / BodyPartExamined from the DICOM header; a message if they rule it out."""
    modality = str(meta.get("Modality", "")).strip().upper()
    body = str(meta.get("BodyPartExamined", "")).strip().upper()
    msg = None
    if modality not in XRAY_MODALITIES | UNKNOWN_MODALITIES:
        checks["dicom_modality"] = _check(modality, "CR|DX", "in", False, "chest")
        what = MODALITY_NAMES.get(modality, f"modality {modality}")
        msg = f"the DICOM header says this is {what} (Modality {modality}), not a chest X-ray"
    elif modality:
        checks["dicom_modality"] = _check(modality, "CR|DX", "in", True, "chest")
    if body not in UNKNOWN_BODY_PARTS:
        ok = any(p in body for p in CHEST_BODY_PARTS)
        checks["dicom_body_part"] = _check(body, "CHEST", "in", ok, "chest")
        if not ok and msg is None:
            msg = f"the DICOM header says this is an X-ray of the {body.lower()}, not the chest"
    return msg


def _header_refusal(meta: dict[str, Any], checks: dict) -> GateResult | None:
    """A DICOM refused on its header fields alone (pixels never read), or None."""
    header = {k: str(v) for k, v in meta.items() if k in SAFE_FIELDS}
    msg = _dicom_checks(header, checks)
    if msg is None:
        return None
    return _reject(Refusal.NOT_CHEST_XRAY, msg, checks, meta=dict(meta))


def _chest_message(c: dict[str, Any]) -> str:
    """Why the chest layer refused, from the detector's scores and its most likely kind."""
    scores = ", ".join(f"{k} {v:.3g}" for k, v in c["scores"].items())
    if c.get("top_class") == ROTATED:
        return (
            "this looks like a chest X-ray turned on its side or upside down (or a lateral "
            "view: only frontal PA/AP films are read): if it is rotated, please upload it "
            f"upright ({scores})"
        )
    return (
        "this does not look like a frontal chest X-ray: it may be an X-ray of another body "
        "part (hand, knee, elbow...), another kind of scan (CT, MRI, ultrasound), or not a "
        f"medical image ({scores}; limit {c['threshold']:.3g})"
    )


def _refusal(layer: str | None, checks: dict[str, dict[str, Any]]) -> tuple[Refusal, str] | None:
    """The code and plain-words message of the first failing layer."""
    if layer is None:
        return None
    bad = [k for k, c in checks.items() if c["layer"] == layer and not c["passed"]]
    if layer == "xray":
        words = _XRAY_WORDS[bad[0]].format(v=checks[bad[0]]["value"])
    elif layer == "chest":
        words = _chest_message(checks[bad[0]])
    else:
        words = "; ".join(
            _QUALITY_WORDS[b].format(v=checks[b]["value"], t=checks[b]["threshold"]) for b in bad
        )
    return LAYER_CODES[layer], words


def gate_decoded(
    decoded: Decoded, settings: Settings | None = None, model: GateModel | None = None
) -> GateResult:
    """Layers 2-4 on an already decoded image (the API can reuse format_check's decode)."""
    s = settings or Settings()
    m = model or default_model(s)
    checks: dict[str, dict[str, Any]] = {}
    meta = {k: decoded.meta[k] for k in SAFE_META if k in decoded.meta}
    meta |= {"format": decoded.format}
    meta |= {"width": int(decoded.pixels.shape[1]), "height": int(decoded.pixels.shape[0])}
    kw = {"decoded": decoded, "meta": meta}
    dicom_msg = _dicom_checks(decoded.meta, checks) if decoded.format == "dicom" else None
    if dicom_msg:
        return _reject(Refusal.NOT_CHEST_XRAY, dicom_msg, checks, **kw)
    try:
        feats = compute_features(decoded.pixels)
    except (ValueError, TypeError, cv2.error, ImageDecodeError) as exc:  # odd pixel layouts
        why = f"the image's pixels could not be analysed ({type(exc).__name__})"
        checks["analysable"] = _check(False, True, "eq", False, "format")
        return _reject(Refusal.UNSUPPORTED_FORMAT, why, checks, **kw)
    checks |= m.assess(feats)
    refused = _refusal(failing_layer(checks, s.gate_check_quality), checks)
    if refused:
        return _reject(*refused, checks, **kw)
    return GateResult(True, None, "accepted: this looks like a usable chest X-ray", checks, **kw)


def run_gate(
    data: bytes, settings: Settings | None = None, model: GateModel | None = None
) -> GateResult:
    """All four layers on raw upload bytes. Never raises for bad input."""
    fmt = format_check(data, settings, dicom_header_first=True)
    if fmt.accepted:
        fmt = decode_check(data, fmt, settings)
    if not fmt.accepted or fmt.decoded is None:
        return fmt
    res = gate_decoded(fmt.decoded, settings, model)
    res.checks = fmt.checks | res.checks
    res.meta = fmt.meta | res.meta
    return res


# ----------------------------------------------------------------------------- model loading

_MODEL_LOCK = threading.Lock()
_MODELS: dict[str, GateModel] = {}


def default_model(settings: Settings | None = None, path: Path | None = None) -> GateModel:
    """Load (once per process) the fitted gate: ``path``, else GATE_DIR, else the gate/
    folder beside the winner. Never fits: a missing or stale gate raises
    GateUnavailableError, whose message says how to fit one."""
    d = path or (settings or Settings()).resolve_gate_dir()
    if d is None:
        raise GateUnavailableError(
            "no fitted input gate: no winner found (MODEL_PATH/RESULTS_DIR) and GATE_DIR unset"
        )
    with _MODEL_LOCK:
        if str(d) not in _MODELS:
            _MODELS[str(d)] = load_gate(d)
        return _MODELS[str(d)]


# ----------------------------------------------------------------------------- CLI


def _line(path: Path, r: GateResult | None, error: str | None = None) -> str:
    if r is None:
        body = {"accepted": False, "code": "unreadable", "message": error, "checks": {}}
    else:
        body = {"accepted": r.accepted, "code": r.code, "message": r.message, "checks": r.checks}
    return json.dumps({"file": str(path)} | body)


def main(argv: list[str] | None = None) -> int:
    """``python -m service.gate [--gate DIR] FILE...``: one JSON line per file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="gate: %(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(
        prog="python -m service.gate",
        description="Run the input gate on files; one JSON line per file. "
        "Fit the gate with 'python run_study.py gate fit --study results/<study>'.",
    )
    ap.add_argument(
        "--gate",
        type=Path,
        default=None,
        help="gate folder (default: GATE_DIR, else results/<study>/gate beside the winner)",
    )
    ap.add_argument("files", nargs="+", type=Path)
    a = ap.parse_args(argv)
    settings = Settings()
    try:
        model = default_model(settings, a.gate)
    except GateUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for f in a.files:
        try:
            data = f.read_bytes()
        except OSError as exc:
            print(_line(f, None, str(exc)), flush=True)
            continue
        print(_line(f, run_gate(data, settings, model)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
