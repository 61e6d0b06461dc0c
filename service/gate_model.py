"""The fitted part of the input gate: thresholds and the eigen-lung PCA.

Nothing here is tuned by hand on the sample images. Every threshold comes from
the training X-rays by one rule per layer, and the chest detector's threshold is
calibrated on the patient-grouped VALIDATION split for a stated acceptance rate:

* feature thresholds: the training 0.5th/99.5th percentile, widened by ``margin``
  times its distance from the median (on a log scale for scale-like features).
  The X-ray layer uses a wider margin (2) than the quality layer (1) because it
  must also pass radiographs of other body parts and devices, which the chest
  training set never shows; it only has to tell radiographs from photos,
  documents and graphics.
* colour: training X-rays have no coloured pixels at all, so the threshold has a
  floor (5% of the image) that leaves room for coloured burned-in annotations.
  Likewise clipped white has a floor of 2%: the JPEG training copies hold almost
  no pure white, while other sources burn in white labels and markers.
* chest: PCA on 32x32 equalised thumbnails of training X-rays; the score is the
  Gaussian negative log-likelihood estimate of Moghaddam and Pentland
  (Mahalanobis distance in the PCA space plus residual energy over the mean
  discarded eigenvalue), and its threshold is the validation quantile that gives
  ``target_acceptance``.

Saved as ``<name>.npz`` (arrays) next to ``<name>.json`` (thresholds, provenance).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.gate_features import (
    CHEST_CFG,
    FEATURES,
    WORK_SIZE,
    GateFeatures,
    compute_features,
)
from study.serving import decode

FORMAT_VERSION = 2
XRAY_MARGIN = 2.0
QUALITY_MARGIN = 1.0
COLOUR_FLOOR = 0.05
CLIPPED_WHITE_FLOOR = 0.02
VARIANCE_KEPT = 0.80  # PCA components: enough for 80% of the thumbnail variance
MAX_COMPONENTS = 64


@dataclass
class Threshold:
    """One decision boundary: value must be <= (max) or >= (min) the threshold."""

    value: float
    kind: str  # "max" or "min"
    layer: str
    how: str  # how it was derived, for the JSON and the README

    def passes(self, x: float) -> bool:
        return x <= self.value if self.kind == "max" else x >= self.value


@dataclass
class GateModel:
    """Thresholds plus the PCA basis of the chest detector."""

    thresholds: dict[str, Threshold]
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d)
    eigenvalues: np.ndarray  # (k,)
    residual_variance: float  # mean discarded eigenvalue (rho)
    info: dict[str, Any] = field(default_factory=dict)

    def chest_scores(self, vec: np.ndarray) -> dict[str, float]:
        """Mahalanobis distance in PCA space, residual energy and their combined score."""
        centred = vec.astype(np.float64) - self.mean
        coef = self.components @ centred
        resid = centred - coef @ self.components
        md2 = float((coef**2 / self.eigenvalues).sum())
        res = float((resid**2).sum())
        return {
            "mahalanobis": float(np.sqrt(md2)),
            "residual": res,
            "score": md2 + res / self.residual_variance,
        }

    def save(self, out_path: Path) -> Path:
        out_path = Path(out_path).with_suffix(".npz")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent reader never sees half a model.
        tmp = out_path.with_name(f".{out_path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(
            tmp,
            mean=self.mean.astype(np.float32),
            components=self.components.astype(np.float32),
            eigenvalues=self.eigenvalues.astype(np.float64),
            residual_variance=np.float64(self.residual_variance),
        )
        meta = {
            "format_version": FORMAT_VERSION,
            "features": feature_signature(),
            "thresholds": {k: vars(t) for k, t in self.thresholds.items()},
            "info": self.info,
        }
        tmp_json = tmp.with_suffix(".json")
        tmp_json.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_json, out_path.with_suffix(".json"))
        os.replace(tmp, out_path)
        return out_path


def feature_signature() -> dict[str, Any]:
    """What a saved model's numbers mean; a model fitted with other features is stale."""
    return {"features": sorted(FEATURES), "work_size": WORK_SIZE, "chest": CHEST_CFG.to_dict()}


class StaleGateError(ValueError):
    """The saved gate was fitted by another version of the features: refit it."""


def load_gate(path: str | os.PathLike[str]) -> GateModel:
    """Load ``gate.npz`` + ``gate.json`` (either name may be given)."""
    p = Path(path)
    npz, js = p.with_suffix(".npz"), p.with_suffix(".json")
    if not npz.is_file() or not js.is_file():
        raise FileNotFoundError(f"no gate model at {npz} (+ .json); fit one with 'fit'")
    meta = json.loads(js.read_text())
    if meta.get("format_version") != FORMAT_VERSION or meta.get("features") != json.loads(
        json.dumps(feature_signature())
    ):
        raise StaleGateError(f"{js} was fitted by another version of the gate; refit it")
    with np.load(npz) as z:
        return GateModel(
            thresholds={k: Threshold(**v) for k, v in meta["thresholds"].items()},
            mean=z["mean"].astype(np.float64),
            components=z["components"].astype(np.float64),
            eigenvalues=z["eigenvalues"],
            residual_variance=float(z["residual_variance"]),
            info=meta.get("info", {}),
        )


def _feature_threshold(values: np.ndarray, kind: str, log: bool, margin: float) -> float:
    """Tail percentile widened by ``margin`` times its distance from the median."""
    v = np.log(np.maximum(values, 1e-9)) if log else values.astype(np.float64)
    med = float(np.median(v))
    if kind == "max":
        tail = float(np.percentile(v, 99.5))
        t = tail + margin * (tail - med)
    else:
        tail = float(np.percentile(v, 0.5))
        t = tail - margin * (med - tail)
    return float(np.exp(t)) if log else t


def _features_of(paths: list[str]) -> list[GateFeatures]:
    return [compute_features(decode(Path(p).read_bytes()).pixels) for p in paths]


def _sample_paths(
    data_dir: Path, seed: int, max_train: int, max_val: int
) -> tuple[list[str], list[str]]:
    """Seeded subsamples of the patient-grouped train and val splits (no shared patient)."""
    from study.serving import make_splits, scan  # scikit-learn: loaded only when fitting

    plan = make_splits(scan(data_dir), seed=42)
    rng = np.random.default_rng(seed)

    def pick(split: str, n: int) -> list[str]:
        recs = plan.of(split)
        idx = rng.choice(len(recs), size=min(n, len(recs)), replace=False)
        return [recs[i].path for i in sorted(idx)]

    train_paths, val_paths = pick("train", max_train), pick("val", max_val)
    if len(train_paths) < 20 or len(val_paths) < 10:
        raise ValueError(f"too few images to fit the gate ({len(train_paths)} train)")
    return train_paths, val_paths


def _feature_rule(name: str, values: np.ndarray) -> Threshold:
    """One feature's threshold from the training values, and how it was derived."""
    layer, kind, log = FEATURES[name]
    if name == "min_side":
        how = "smallest side of any training image (the model never saw less detail)"
        return Threshold(float(values.min()), kind, layer, how)
    margin = XRAY_MARGIN if layer == "xray" else QUALITY_MARGIN
    thr = _feature_threshold(values, kind, log, margin)
    pct = "99.5th" if kind == "max" else "0.5th"
    how = f"train {pct} percentile widened by {margin:g}x its distance from the median"
    how += " (log scale)" if log else ""
    if name == "colour_fraction" and thr < COLOUR_FLOOR:
        thr, how = COLOUR_FLOOR, how + f"; floor {COLOUR_FLOOR:g} for coloured annotations"
    if name == "clipped_white" and thr < CLIPPED_WHITE_FLOOR:
        thr = CLIPPED_WHITE_FLOOR
        how += f"; floor {CLIPPED_WHITE_FLOOR:g}: a label or marker is not over-exposure"
    return Threshold(thr, kind, layer, how)


def _eigen_lungs(train: list[GateFeatures], thresholds: dict[str, Threshold]) -> GateModel:
    """PCA by SVD of the centred training thumbnails; keeps VARIANCE_KEPT of the variance."""
    x = np.stack([f.chest_vector for f in train]).astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    lam = s**2 / (len(x) - 1)
    ratio = np.cumsum(lam) / lam.sum()
    k = int(min(np.searchsorted(ratio, VARIANCE_KEPT) + 1, MAX_COMPONENTS, len(lam) - 1))
    return GateModel(thresholds, mean, vt[:k], lam[:k], float(lam[k:].mean()))


def _calibrate_chest(model: GateModel, val: list[GateFeatures], target: float) -> None:
    """The chest-score threshold: the validation quantile that accepts ``target`` of them."""
    val_scores = np.array([model.chest_scores(f.chest_vector)["score"] for f in val])
    model.thresholds["chest_score"] = Threshold(
        float(np.quantile(val_scores, target)),
        "max",
        "chest",
        f"validation {target:.1%} quantile of the eigen-lung score "
        f"(PCA, {len(model.components)} components, {VARIANCE_KEPT:.0%} variance)",
    )


def _val_acceptance(model: GateModel, val: list[GateFeatures]) -> dict[str, Any]:
    """Share of validation X-rays that pass all checks, and each check alone."""
    t = model.thresholds

    def accepted(f: GateFeatures) -> dict[str, bool]:
        out = {name: t[name].passes(f.values[name]) for name in FEATURES}
        out["chest_score"] = t["chest_score"].passes(model.chest_scores(f.chest_vector)["score"])
        return out

    val_pass = [accepted(f) for f in val]
    return {
        "val_acceptance_all_checks": float(np.mean([all(v.values()) for v in val_pass])),
        "val_acceptance_per_check": {
            name: float(np.mean([v[name] for v in val_pass])) for name in t
        },
    }


def fit_gate(
    data_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    max_train: int = 1200,
    max_val: int = 700,
    target_acceptance: float = 0.99,
) -> GateModel:
    """Learn thresholds from training X-rays and calibrate the chest detector on val.

    Uses the project's patient-grouped splits (the study's make_splits), so the
    validation images that set the chest threshold share no patient with the
    images the PCA was fitted on. Subsamples (seeded) to stay well under a minute.
    """
    t0 = time.time()
    train_paths, val_paths = _sample_paths(Path(data_dir), seed, max_train, max_val)
    train, val = _features_of(train_paths), _features_of(val_paths)
    thresholds = {
        name: _feature_rule(name, np.array([f.values[name] for f in train])) for name in FEATURES
    }
    model = _eigen_lungs(train, thresholds)
    _calibrate_chest(model, val, target_acceptance)
    model.info = {
        "data_dir_name": Path(data_dir).name,
        "seed": seed,
        "n_train": len(train_paths),
        "n_val": len(val_paths),
        "components": len(model.components),
        "work_size": WORK_SIZE,
        "chest_preprocess": CHEST_CFG.to_dict(),
        "target_acceptance": target_acceptance,
        **_val_acceptance(model, val),
        "fit_seconds": round(time.time() - t0, 1),
        "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if out_path is not None:
        model.save(Path(out_path))
    return model
