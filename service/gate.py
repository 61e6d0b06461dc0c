"""Input gate: "is this a usable chest X-ray?", in four layers, each with its own code.

1. format   ``not_an_image`` / ``unsupported_format`` / ``too_large`` /
   ``burned_in_annotation``: JPEG, PNG or DICOM, byte and pixel limits
   (Settings.max_upload_bytes / max_pixels) checked from the headers before any
   pixel is decoded (:func:`format_check`, the API's only check), then the one
   frame used is decoded through the study's decode (:func:`decode_check`, worker).
2. X-ray    ``not_xray``: colour, white background, edge density
   and fine detail against thresholds learned from the training X-rays.
3. chest    ``not_chest_xray``: DICOM Modality/BodyPartExamined when present, then
   a one-class "eigen-lung" PCA detector calibrated on validation X-rays.
4. quality  ``low_quality``: resolution, blur, clipping and contrast.

Every check is computed and reported with its threshold; the code is that of
the first layer that fails, and the message names the failing check in plain
words. Fitted parameters live in a GateModel (service.gate_model), built from
the data and never committed.

CLI::

    python -m service.gate fit --data-dir DIR --out results/gate/gate.npz
    python -m service.gate [--gate PATH] FILE...   # one JSON line per file
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import cv2

from service.gate_features import FEATURES, GateFeatures, compute_features
from service.gate_model import GateModel, StaleGateError, Threshold, fit_gate, load_gate
from service.settings import Settings
from study.serving import (
    DEFAULT_DATA_DIR,
    Decoded,
    ImageDecodeError,
    decode,
    dicom_header,
    header_size,
    sniff_format,
    to_grayscale,
)

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_GATE_PATH = Path("results") / "gate" / "gate.npz"


class Refusal(StrEnum):
    """The gate's refusal codes, one per layer (format has four); stored and sent as strings."""

    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_LARGE = "too_large"
    BURNED_IN_ANNOTATION = "burned_in_annotation"
    NOT_XRAY = "not_xray"
    NOT_CHEST_XRAY = "not_chest_xray"
    LOW_QUALITY = "low_quality"


# DICOM: modalities that are chest radiographs; others are refused on the header alone.
XRAY_MODALITIES = {"CR", "DX", "DR"}
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
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORSO")
SAFE_META = ("Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation")
SAFE_META += ("transfer_syntax", "bit_depth")

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


def _check(value: Any, threshold: Any, kind: str, passed: bool, layer: str) -> dict[str, Any]:
    return {
        "value": _num(value),
        "threshold": _num(threshold),
        "kind": kind,
        "passed": bool(passed),
        "layer": layer,
    }


def _num(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 6)
    return x


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


def format_check(data: bytes, settings: Settings | None = None) -> GateResult:
    """Layer 1 from headers only: magic bytes, byte limit, declared sizes and DICOM header
    fields. Never decodes a pixel (the API runs it on every upload); never raises."""
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
        return _dicom_header_check(data, s, checks)
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
}
_QUALITY_WORDS = {
    "min_side": "the image is too small ({v:.0f} px on its shortest side; need at least {t:.0f})",
    "sharpness": "the image is too blurred to read",
    "clipped_white": "the image is over-exposed ({v:.0%} of the pixels are pure white)",
    "clipped_black": "the image is under-exposed ({v:.0%} of the pixels are pure black)",
    "contrast": "the image has too little contrast to read",
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
    if body:
        ok = any(p in body for p in CHEST_BODY_PARTS)
        checks["dicom_body_part"] = _check(body, "CHEST", "in", ok, "chest")
        if not ok and msg is None:
            msg = f"the DICOM header says this is an X-ray of the {body.lower()}, not the chest"
    return msg


def _content_checks(feats: GateFeatures, m: GateModel) -> dict[str, dict[str, Any]]:
    """Every X-ray, chest and quality score against its fitted threshold."""
    checks: dict[str, dict[str, Any]] = {}
    for name, (layer, _, _) in FEATURES.items():
        t: Threshold = m.thresholds[name]
        v = feats.values[name]
        checks[name] = _check(v, t.value, t.kind, t.passes(v), layer)
    cs = m.chest_scores(feats.chest_vector)
    t = m.thresholds["chest_score"]
    checks["chest_score"] = _check(cs["score"], t.value, t.kind, t.passes(cs["score"]), "chest")
    checks["chest_score"]["mahalanobis"] = _num(cs["mahalanobis"])
    checks["chest_score"]["residual"] = _num(cs["residual"])
    return checks


def gate_decoded(
    decoded: Decoded, settings: Settings | None = None, model: GateModel | None = None
) -> GateResult:
    """Layers 2-4 on an already decoded image (the API can reuse format_check's decode)."""
    s = settings or Settings()
    m = model or default_model()
    checks: dict[str, dict[str, Any]] = {}
    meta = {k: decoded.meta[k] for k in SAFE_META if k in decoded.meta}
    meta |= {"format": decoded.format}
    meta |= {"width": int(decoded.pixels.shape[1]), "height": int(decoded.pixels.shape[0])}

    dicom_msg = _dicom_checks(decoded.meta, checks) if decoded.format == "dicom" else None
    try:
        feats = compute_features(decoded.pixels)
    except (ValueError, TypeError, cv2.error, ImageDecodeError) as exc:  # odd pixel layouts
        why = f"the image's pixels could not be analysed ({type(exc).__name__})"
        checks["analysable"] = _check(False, True, "eq", False, "format")
        return _reject(Refusal.UNSUPPORTED_FORMAT, why, checks, decoded=decoded, meta=meta)
    checks |= _content_checks(feats, m)

    def failing(layer: str) -> list[str]:
        return [k for k, c in checks.items() if c["layer"] == layer and not c["passed"]]

    kw = {"decoded": decoded, "meta": meta}
    if dicom_msg:
        return _reject(Refusal.NOT_CHEST_XRAY, dicom_msg, checks, **kw)
    bad = failing("xray")
    if bad:
        words = _XRAY_WORDS[bad[0]].format(v=checks[bad[0]]["value"])
        return _reject(Refusal.NOT_XRAY, words, checks, **kw)
    if failing("chest"):
        c = checks["chest_score"]
        return _reject(
            Refusal.NOT_CHEST_XRAY,
            "this does not look like a frontal chest X-ray in the usual orientation: it may "
            "be an X-ray of another body part (hand, knee, elbow...), another kind of scan "
            "(CT, MRI), a rotated or inverted image, or not a medical image "
            f"(chest-shape score {c['value']:.0f}, limit {c['threshold']:.0f})",
            checks,
            **kw,
        )
    bad = failing("quality") if s.gate_check_quality else []
    if bad:
        words = [
            _QUALITY_WORDS[b].format(v=checks[b]["value"], t=checks[b]["threshold"]) for b in bad
        ]
        return _reject(Refusal.LOW_QUALITY, "; ".join(words), checks, **kw)
    return GateResult(True, None, "accepted: this looks like a usable chest X-ray", checks, **kw)


def run_gate(
    data: bytes, settings: Settings | None = None, model: GateModel | None = None
) -> GateResult:
    """All four layers on raw upload bytes. Never raises for bad input."""
    fmt = format_check(data, settings)
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


def default_gate_path() -> Path:
    """PNEUMOSCOPE_GATE_PATH, else results/gate/gate.npz under the repo."""
    p = Path(os.environ.get("PNEUMOSCOPE_GATE_PATH", DEFAULT_GATE_PATH))
    return p if p.is_absolute() else REPO / p


def default_model(path: Path | None = None, fit_if_missing: bool = True) -> GateModel:
    """Load (once) the gate model; fit it from PNEUMOSCOPE_DATA_DIR first if there is none
    (or if the saved one was fitted by another version of the features)."""
    p = Path(path) if path else default_gate_path()
    with _MODEL_LOCK:
        if str(p) not in _MODELS:
            try:
                _MODELS[str(p)] = load_gate(p)
            except (FileNotFoundError, StaleGateError) as exc:
                if not fit_if_missing:
                    raise
                d = DEFAULT_DATA_DIR
                why = "stale" if isinstance(exc, StaleGateError) else "no"
                log.warning("%s gate model at %s: fitting it from %s (about a minute)", why, p, d)
                fit_gate(d, p, seed=0)
                _MODELS[str(p)] = load_gate(p)
        return _MODELS[str(p)]


# ----------------------------------------------------------------------------- CLI


def _cli_fit(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m service.gate fit", description=fit_gate.__doc__)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--out", type=Path, default=default_gate_path())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-train", type=int, default=1200)
    ap.add_argument("--max-val", type=int, default=700)
    ap.add_argument("--target-acceptance", type=float, default=0.99)
    a = ap.parse_args(argv)
    model = fit_gate(a.data_dir, a.out, a.seed, a.max_train, a.max_val, a.target_acceptance)
    print(json.dumps({"out": str(a.out.with_suffix(".npz"))} | model.info))
    return 0


def _cli_check(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m service.gate",
        description="Run the input gate on files; one JSON line per file. "
        "'python -m service.gate fit ...' fits the gate model.",
    )
    ap.add_argument("--gate", type=Path, default=None, help="gate .npz (default: env/results)")
    ap.add_argument("files", nargs="+", type=Path)
    a = ap.parse_args(argv)
    model = default_model(a.gate)
    settings = Settings()
    for f in a.files:
        try:
            data = f.read_bytes()
        except OSError as exc:
            print(
                json.dumps(
                    {
                        "file": str(f),
                        "accepted": False,
                        "code": "unreadable",
                        "message": str(exc),
                        "checks": {},
                    }
                )
            )
            continue
        r = run_gate(data, settings, model)
        line = {"file": str(f), "accepted": r.accepted, "code": r.code, "message": r.message}
        print(json.dumps(line | {"checks": r.checks}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="gate: %(message)s", stream=sys.stderr)
    if argv and argv[0] == "fit":
        return _cli_fit(argv[1:])
    return _cli_check(argv)


if __name__ == "__main__":
    raise SystemExit(main())
