"""The fitted input gate: thresholds, the learned chest detector, and how a decision is scored.

A fitted gate is a folder (``results/<study>/gate/``)::

    gate.json               thresholds (each with how it was derived), version, provenance,
                            the calibration report
    gate.npz                the detector's arrays (feature scaler, chest density, classifier)
    backbone.tflite         the ImageNet EfficientNet-Lite0 backbone it was fitted with

The chest detector works on the backbone's 1280-d features, standardised:

* ``chest_distance``: Mahalanobis distance to the chest films, with a Ledoit-Wolf
  shrinkage covariance (a one-class density: anything unlike every chest film is far);
* ``chest_probability``: a multinomial logistic regression over four kinds (chest,
  rotated chest, other medical image, photo/document), trained against real negatives.

Which of the two decides (one, or both) is chosen at fit time on calibration data
(study.gate.fit); both scores are always reported. The X-ray layer has its own
learned check, ``xray_probability``: a binary logistic regression "radiograph or not"
(X-ray films of any body part against photos, documents, MR, CT and ultrasound), so a
grey photo is told it is not an X-ray rather than not a chest X-ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, softmax

from study.gate.embed import BACKBONE_FILE, EMBED_SIZE, RUNTIME, embedder, embedding_dim
from study.gate.scalar import FEATURES, WORK_SIZE, GateFeatures, compute_features
from study.gate.sources import KINDS

FORMAT_VERSION = 5
GATE_DIR_NAME = "gate"  # results/<study>/gate, beside the winner
LAYERS = ("xray", "chest", "quality")  # the order in which a failing layer refuses
RULES = ("both", "distance", "probability")  # preference order on ties


class GateUnavailableError(FileNotFoundError):
    """No usable fitted gate: the message says how to fit one (the service never fits)."""


@dataclass
class Threshold:
    """One decision boundary: value must be <= (max) or >= (min) the threshold."""

    value: float
    kind: str  # "max" or "min"
    layer: str
    how: str  # how it was derived, for the JSON and the README

    def passes(self, x: float) -> bool:
        return x <= self.value if self.kind == "max" else x >= self.value


def num(x: Any) -> Any:
    """JSON-friendly rounding of floats."""
    return round(float(x), 6) if isinstance(x, float | np.floating) else x


def check(value: Any, threshold: Any, kind: str, passed: bool, layer: str) -> dict[str, Any]:
    """One entry of a decision's ``checks``: the score, its threshold, pass/fail, layer."""
    return {
        "value": num(value),
        "threshold": num(threshold),
        "kind": kind,
        "passed": bool(passed),
        "layer": layer,
    }


@dataclass
class Detector:
    """Arrays of the learned chest detector (see the module doc)."""

    scale_mean: np.ndarray  # (d,)
    scale_std: np.ndarray  # (d,)
    centre: np.ndarray  # (d,) chest mean, standardised space
    precision: np.ndarray  # (d, d) inverse Ledoit-Wolf covariance
    coef: np.ndarray  # (len(KINDS), d)
    intercept: np.ndarray  # (len(KINDS),)
    xray_coef: np.ndarray  # (d,) radiograph or not
    xray_intercept: np.ndarray  # (1,)

    def scores(self, emb: np.ndarray) -> dict[str, Any]:
        """Mahalanobis distance, class and radiograph probabilities of (n, d) features."""
        z = (np.atleast_2d(emb).astype(np.float64) - self.scale_mean) / self.scale_std
        c = z - self.centre
        dist = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", c, self.precision, c), 0.0))
        proba = softmax(z @ self.coef.T + self.intercept, axis=1)
        xray = expit(z @ self.xray_coef + self.xray_intercept[0])
        return {"distance": dist, "proba": proba, "xray": xray}

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in vars(self).items()}


@dataclass
class GateModel:
    """Thresholds of every layer plus the detector; ``rule`` says which chest scores decide."""

    thresholds: dict[str, Threshold]
    detector: Detector
    rule: str
    directory: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    version: str = ""

    def embed(self, works: np.ndarray) -> np.ndarray:
        if self.directory is None:
            raise GateUnavailableError("this gate has no backbone on disk")
        return embedder(self.directory / BACKBONE_FILE)(works)

    def assess(self, feats: GateFeatures, emb: np.ndarray | None = None) -> dict[str, dict]:
        """Every check of the X-ray, chest and quality layers (scalar and learned)."""
        t = self.thresholds
        checks: dict[str, dict[str, Any]] = {}
        for name, (layer, _, _) in FEATURES.items():
            v = feats.values[name]
            checks[name] = check(v, t[name].value, t[name].kind, t[name].passes(v), layer)
        emb = self.embed(feats.work) if emb is None else emb
        s = self.detector.scores(emb)
        proba = {k: float(p) for k, p in zip(KINDS, s["proba"][0], strict=True)}
        learned = {
            "xray_probability": float(s["xray"][0]),
            "chest_probability": proba["chest"],
            "chest_distance": float(s["distance"][0]),
        }
        for name, v in learned.items():
            if name in t:
                checks[name] = check(
                    v, t[name].value, t[name].kind, t[name].passes(v), t[name].layer
                )
        chest = checks.get("chest_probability") or checks["chest_distance"]
        chest["scores"] = {k: num(v) for k, v in learned.items()}
        chest["classes"] = {k: num(v) for k, v in proba.items()}
        chest["top_class"] = max(proba, key=proba.__getitem__)
        return checks

    def assess_pixels(self, pixels: np.ndarray) -> dict[str, dict]:
        return self.assess(compute_features(pixels))


def failing_layer(checks: dict[str, dict], quality: bool = True) -> str | None:
    """The first layer (xray, chest, quality) with a failed check, or None."""
    for layer in LAYERS:
        if layer == "quality" and not quality:
            continue
        if any(c["layer"] == layer and not c["passed"] for c in checks.values()):
            return layer
    return None


def signature() -> dict[str, Any]:
    """What a saved gate's numbers mean; a gate fitted with other features is stale."""
    return {
        "format_version": FORMAT_VERSION,
        "scalar_features": sorted(FEATURES),
        "work_size": WORK_SIZE,
        "embedding": {
            "backbone": "efficientnet_lite0_imagenet",
            "size": EMBED_SIZE,
            "dim": embedding_dim(),
            "runtime": RUNTIME,
        },
        "kinds": list(KINDS),
    }


def _version(det: Detector, meta: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for v in det.arrays().values():
        h.update(np.ascontiguousarray(v, dtype=np.float64).tobytes())
    return "gate-" + h.hexdigest()[:12]


def save_gate(model: GateModel, out_dir: Path, backbone: Path) -> Path:
    """Write the gate folder (a temporary folder renamed into place: readers never see half)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    np.savez_compressed(tmp / "gate.npz", **model.detector.arrays())
    shutil.copyfile(backbone, tmp / BACKBONE_FILE)
    meta = {
        "signature": signature(),
        "rule": model.rule,
        "thresholds": {k: vars(t) for k, t in model.thresholds.items()},
    }
    model.version = _version(model.detector, meta)
    meta = {"version": model.version, **meta, "info": model.info}
    (tmp / "gate.json").write_text(json.dumps(meta, indent=1, default=num))
    old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    model.directory = out_dir
    return out_dir


def load_gate(directory: str | os.PathLike[str]) -> GateModel:
    """Load a gate folder written by :func:`save_gate`; a clear error if missing or stale."""
    d = Path(directory)
    if d.name == "gate.json":
        d = d.parent
    js, npz = d / "gate.json", d / "gate.npz"
    if not (js.is_file() and npz.is_file() and (d / BACKBONE_FILE).is_file()):
        raise GateUnavailableError(
            f"no fitted input gate in {d}: fit it with 'python run_study.py gate fit "
            "--study results/<study>' (the service never fits a gate)"
        )
    meta = json.loads(js.read_text())
    if meta.get("signature") != json.loads(json.dumps(signature())):
        raise GateUnavailableError(
            f"{js} was fitted by another version of the gate; refit it with "
            "'python run_study.py gate fit --study results/<study>'"
        )
    with np.load(npz) as z:
        det = Detector(**{k: z[k].astype(np.float64) for k in z.files})
    return GateModel(
        thresholds={k: Threshold(**v) for k, v in meta["thresholds"].items()},
        detector=det,
        rule=meta["rule"],
        directory=d,
        info=meta.get("info", {}),
        version=meta["version"],
    )
