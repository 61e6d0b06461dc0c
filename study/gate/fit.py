"""Fit the input gate for a study: ``python run_study.py gate fit --study results/<study>``.

Nothing is tuned by hand on the sample images (``../shared/data/samples`` is a dev
set for the README table only). The rules:

* scalar X-ray and quality thresholds: the 0.5th/99.5th percentile of the Kermany fit
  films (for the exposure and framing features, of their adult-like copies too: these
  vary between hospitals; blur and detail do not), widened by ``margin`` times its
  distance from the median (log scale for scale-like features); the X-ray layer uses a
  wider margin (2) than the quality layer (1) because it must pass radiographs the
  chest set never shows. Colour has a floor of 5% (coloured burned-in annotations),
  clipped white one of 2%. The smallest side is the winner's input size (a smaller
  film would be enlarged: detail the model was never shown is missing), or the
  smallest training film without a winner.
* chest detector: Ledoit-Wolf Mahalanobis density on the chest fit features and a
  multinomial logistic regression against the real negatives (study.gate.sources).
  Each threshold sits midway between the calibration chest films (held-out patients
  plus their adult-like copies) and the calibration non-chest images, at their
  ``target_acceptance`` quantiles (logit scale for the probability); which score
  decides (distance, probability or both) is measured on every source's calibration
  part and the best mean per-source accuracy wins.
* ``xray_probability``: a binary logistic regression, radiographs (chest films, turned
  or not, and the lower-leg X-ray) against everything else, its threshold set by the
  same midway rule between calibration radiographs and calibration non-radiographs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from study.data.preprocess import ImageDecodeError
from study.gate.embed import BACKBONE_FILE, convert_backbone, embedder
from study.gate.model import (
    GATE_DIR_NAME,
    RULES,
    Detector,
    GateModel,
    Threshold,
    failing_layer,
    save_gate,
    signature,
)
from study.gate.scalar import FEATURES, GateFeatures, compute_features
from study.gate.sources import KINDS, Item, all_items, is_radiograph, safe_load
from study.paths import DATA_DIR_ENV, DEFAULT_CACHE_DIR, DEFAULT_DATA_DIR

XRAY_MARGIN = 2.0
QUALITY_MARGIN = 1.0
COLOUR_FLOOR = 0.05
CLIPPED_WHITE_FLOOR = 0.02
CHEST_SOURCES = ("kermany", "kermany_adult_like")  # the chest thresholds' calibration films
# Vary with exposure and framing between hospitals: fitted on the adult-like copies too.
HOSPITAL_FEATURES = ("white_fraction", "clipped_white", "clipped_black", "contrast")


@dataclass(frozen=True)
class GateFitConfig:
    """How much data the gate fit uses; the defaults take a few minutes on two cores."""

    n_fit: int = field(
        default=1500,
        metadata={"help": "Kermany train films to fit on (each also gives an adult-like copy)"},
    )
    n_calib: int = field(
        default=500,
        metadata={"help": "Kermany val films to calibrate on (each also gives an adult-like copy)"},
    )
    n_variants: int = field(
        default=10, metadata={"help": "random crops/flips/grey copies per negative picture"}
    )
    seed: int = field(
        default=0, metadata={"help": "random seed of the film subsets and the copies"}
    )
    target_acceptance: float = field(
        default=0.995,
        metadata={
            "help": "each chest threshold sits midway between this quantile of the "
            "calibration chest films and that of the non-chest images"
        },
    )
    c: float = field(
        default=0.05,
        metadata={"help": "inverse L2 strength of the chest classifier's logistic regression"},
    )


@dataclass
class Features:
    """Scalar values (n, len(FEATURES)) and embeddings (n, d) of the items that loaded."""

    items: list[Item]
    values: np.ndarray
    emb: np.ndarray

    def select(self, mask: np.ndarray) -> Features:
        return Features(
            [i for i, m in zip(self.items, mask, strict=True) if m],
            self.values[mask],
            self.emb[mask],
        )

    def column(self, attr: str) -> np.ndarray:
        return np.array([getattr(i, attr) for i in self.items])

    def radiograph(self) -> np.ndarray:
        return np.array([is_radiograph(i) for i in self.items], bool)


# ----------------------------------------------------------------------------- features


def _compute(items: list[Item], backbone: Path) -> tuple[list[Item], np.ndarray, np.ndarray]:
    ok, vals, works = [], [], []
    for it in items:
        px = safe_load(it)
        try:
            f = compute_features(px) if px is not None else None
        except (ImageDecodeError, ValueError):  # e.g. a multi-frame volume: not a picture
            f = None
        if f is None:
            continue
        ok.append(it)
        vals.append([f.values[k] for k in FEATURES])
        works.append(f.work)
    emb = embedder(backbone)(np.stack(works)) if works else np.zeros((0, 0), np.float32)
    return ok, np.array(vals, np.float64).reshape(len(ok), len(FEATURES)), emb


def featurise(items: list[Item], weights: Path, backbone: Path, cache_dir: Path | None) -> Features:
    """Features of every item (``backbone``: the TFLite conversion of ``weights``), cached
    per (source, part) chunk under ``cache_dir/gate``."""
    from study.models.offline_weights import sha256_file

    wsha = sha256_file(weights)
    out_items: list[Item] = []
    vals, embs = [], []
    chunks: dict[tuple[str, str], list[Item]] = {}
    for it in items:
        chunks.setdefault((it.source, it.part), []).append(it)
    for chunk in chunks.values():
        key = json.dumps([wsha, signature(), [i.key for i in chunk]], default=str)
        path = (
            Path(cache_dir or "/nonexistent")
            / "gate"
            / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
        )
        if path.is_file():
            with np.load(path) as z:
                kept = set(z["keys"].tolist())
                ok, v, e = [i for i in chunk if i.key in kept], z["values"], z["emb"]
        else:
            ok, v, e = _compute(chunk, backbone)
            if cache_dir is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, keys=np.array([i.key for i in ok]), values=v, emb=e)
        out_items += ok
        vals.append(v)
        embs.append(e)
    return Features(out_items, np.concatenate(vals), np.concatenate(embs).astype(np.float64))


# ----------------------------------------------------------------------------- thresholds


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


def feature_rule(name: str, values: np.ndarray, input_size: int | None = None) -> Threshold:
    """One scalar feature's threshold from chest fit values, and how it was derived."""
    layer, kind, log = FEATURES[name]
    if name == "min_side" and input_size:
        how = f"the winner's input size ({input_size} px): a smaller film would be enlarged"
        return Threshold(float(input_size), kind, layer, how)
    if name == "min_side":
        how = "smallest side of any training image (no winner: the model never saw less detail)"
        return Threshold(float(values.min()), kind, layer, how)
    margin = XRAY_MARGIN if layer == "xray" else QUALITY_MARGIN
    thr = _feature_threshold(values, kind, log, margin)
    pct = "99.5th" if kind == "max" else "0.5th"
    who = "Kermany and adult-like" if name in HOSPITAL_FEATURES else "Kermany"
    how = f"{who} fit films' {pct} percentile widened by {margin:g}x its distance from the median"
    how += " (log scale)" if log else ""
    if name == "colour_fraction" and thr < COLOUR_FLOOR:
        thr, how = COLOUR_FLOOR, how + f"; floor {COLOUR_FLOOR:g} for coloured annotations"
    if name == "clipped_white" and thr < CLIPPED_WHITE_FLOOR:
        thr = CLIPPED_WHITE_FLOOR
        how += f"; floor {CLIPPED_WHITE_FLOOR:g}: a label or marker is not over-exposure"
    return Threshold(thr, kind, layer, how)


def scalar_thresholds(fit: Features, input_size: int | None) -> dict[str, Threshold]:
    """Every scalar feature's threshold from the Kermany fit films (HOSPITAL_FEATURES: and
    their adult-like copies)."""
    src = fit.column("source")
    out = {}
    for j, name in enumerate(FEATURES):
        films = np.isin(src, CHEST_SOURCES) if name in HOSPITAL_FEATURES else src == "kermany"
        out[name] = feature_rule(name, fit.values[films, j], input_size)
    return out


def fit_detector(fit: Features, c: float) -> Detector:
    """Standardise, Ledoit-Wolf density on the chest kind, logistic regression on all kinds,
    and a binary one for "radiograph or not"."""
    from sklearn.covariance import LedoitWolf
    from sklearn.linear_model import LogisticRegression

    mean, std = fit.emb.mean(axis=0), fit.emb.std(axis=0) + 1e-6
    z = (fit.emb - mean) / std
    kinds = fit.column("kind")
    missing = set(KINDS) - set(kinds)
    if missing:
        raise ValueError(f"no fit images of kind {sorted(missing)}: cannot fit the gate")
    lw = LedoitWolf().fit(z[kinds == "chest"])
    y = np.array([KINDS.index(k) for k in kinds])
    lr = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(z, y)
    order = [list(lr.classes_).index(i) for i in range(len(KINDS))]
    xr = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
    xr.fit(z, fit.radiograph())
    return Detector(
        mean,
        std,
        lw.location_,
        lw.precision_,
        lr.coef_[order],
        lr.intercept_[order],
        xr.coef_[0],
        xr.intercept_,
    )


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return float(np.log(p / (1 - p)))


def gap_threshold(pos: np.ndarray, neg: np.ndarray, q: float, kind: str) -> float:
    """Midway between the chest films' edge (the score that keeps ``q`` of them) and the
    non-chest images' edge (the score that refuses ``q`` of them); on the logit scale for
    a probability. Calibrating on chest films alone sets the limit at the rim of the
    Kermany cloud, which refuses adult films; the middle of the gap leaves room for them."""
    if kind == "max":  # a distance: chest films are small
        return float((np.quantile(pos, q) + np.quantile(neg, 1 - q)) / 2)
    mid = (_logit(float(np.quantile(pos, 1 - q))) + _logit(float(np.quantile(neg, q)))) / 2
    return float(1 / (1 + np.exp(-mid)))


def _learned_thresholds(
    det: Detector, chest: Features, others: Features, rule: str, target: float
) -> dict[str, Threshold]:
    """Chest thresholds in the gap between calibration chest films and calibration
    non-chest images, ``target`` quantiles (with both scores deciding, the square root)."""
    s, o = det.scores(chest.emb), det.scores(others.emb)
    q = target if rule != "both" else float(np.sqrt(target))
    n, m = len(chest.items), len(others.items)
    how = f"calibration: midway between the {q:.2%} edges of {n} chest films and {m} others"
    out: dict[str, Threshold] = {}
    if rule in ("distance", "both"):
        t = gap_threshold(s["distance"], o["distance"], q, "max")
        out["chest_distance"] = Threshold(t, "max", "chest", how + " (Mahalanobis distance)")
    if rule in ("probability", "both"):
        t = gap_threshold(s["proba"][:, 0], o["proba"][:, 0], q, "min")
        out["chest_probability"] = Threshold(t, "min", "chest", how + " (logit scale)")
    return out


def xray_threshold(det: Detector, calib: Features, target: float) -> dict[str, Threshold]:
    """The X-ray layer's learned check: midway between calibration radiographs and
    calibration non-radiographs at their ``target`` quantiles (logit scale)."""
    xr = calib.radiograph()
    p = det.scores(calib.emb)["xray"]
    t = gap_threshold(p[xr], p[~xr], target, "min")
    how = (
        f"calibration: midway between the {target:.2%} edges of {int(xr.sum())} radiographs "
        f"and {int((~xr).sum())} other images (logit scale)"
    )
    return {"xray_probability": Threshold(t, "min", "xray", how)}


# ----------------------------------------------------------------------------- calibration


def calibration_report(model: GateModel, calib: Features) -> dict[str, dict[str, Any]]:
    """Per source: how many calibration images the whole gate (X-ray, chest and quality
    layers; no DICOM header) accepts, and which layer refused the others."""
    out: dict[str, dict[str, Any]] = {}
    for i, it in enumerate(calib.items):
        feats = GateFeatures(dict(zip(FEATURES, calib.values[i].tolist(), strict=True)), None)
        layer = failing_layer(model.assess(feats, calib.emb[i : i + 1]))
        r = out.setdefault(it.source, {"kind": it.kind, "n": 0, "accepted": 0, "refused_by": {}})
        r["n"] += 1
        r["accepted"] += layer is None
        if layer is not None:
            r["refused_by"][layer] = r["refused_by"].get(layer, 0) + 1
    for r in out.values():
        ok = r["accepted"] if r["kind"] == "chest" else r["n"] - r["accepted"]
        r["correct_rate"] = round(ok / r["n"], 4)
    return dict(sorted(out.items()))


def choose_rule(
    scalar: dict[str, Threshold], det: Detector, calib: Features, target: float
) -> tuple[GateModel, dict[str, Any]]:
    """Each rule's gate on the calibration parts; the best mean per-source accuracy wins."""
    chest = calib.select(np.isin(calib.column("source"), CHEST_SOURCES))
    others = calib.select(calib.column("kind") != "chest")
    trials: dict[str, Any] = {}
    best: tuple[float, GateModel] | None = None
    fixed = scalar | xray_threshold(det, calib, target)
    for rule in RULES:
        model = GateModel(fixed | _learned_thresholds(det, chest, others, rule, target), det, rule)
        report = calibration_report(model, calib)
        score = float(np.mean([r["correct_rate"] for r in report.values()]))
        trials[rule] = {"mean_correct_rate": round(score, 4), "per_source": report}
        if best is None or score > best[0]:
            best = (score, model)
    assert best is not None
    return best[1], trials


def fit_gate(
    out_dir: Path,
    data_dir: Path | None = None,
    cfg: GateFitConfig | None = None,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    weights_dir: Path | None = None,
    input_size: int | None = None,
) -> GateModel:
    """Fit the whole gate from the sources and write it to ``out_dir`` (see the module doc);
    ``input_size``: the winner's, the smallest side the gate accepts."""
    from study.models.offline_weights import fetch_offline

    cfg = cfg or GateFitConfig()
    t0 = time.time()
    weights = fetch_offline(weights_dir)
    work = Path(tempfile.mkdtemp(prefix="gate-fit-"))
    backbone = convert_backbone(weights, work / BACKBONE_FILE)
    items = all_items(
        Path(data_dir or DEFAULT_DATA_DIR), cfg.n_fit, cfg.n_calib, cfg.n_variants, cfg.seed
    )
    feats = featurise(items, weights, backbone, cache_dir)
    parts = feats.column("part")
    fit, calib = feats.select(parts == "fit"), feats.select(parts == "calib")
    scalar = scalar_thresholds(fit, input_size)
    det = fit_detector(fit, cfg.c)
    model, trials = choose_rule(scalar, det, calib, cfg.target_acceptance)
    model.info = {
        "config": asdict(cfg),
        "data_dir_name": Path(data_dir or DEFAULT_DATA_DIR).name,
        "n_fit": _counts(fit),
        "n_calib": _counts(calib),
        "rule": model.rule,
        "rule_trials": {
            r: {"mean_correct_rate": t["mean_correct_rate"]}
            | {s: v["correct_rate"] for s, v in t["per_source"].items()}
            for r, t in trials.items()
        },
        "calibration": trials[model.rule]["per_source"],
        "fit_seconds": round(time.time() - t0, 1),
        "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_gate(model, Path(out_dir), backbone)
    shutil.rmtree(work, ignore_errors=True)
    return model


def _counts(f: Features) -> dict[str, int]:
    src = f.column("source").tolist()
    return {s: src.count(s) for s in sorted(set(src))}


# ----------------------------------------------------------------------------- study side


def _winner_files(study_dir: Path) -> list[Path]:
    return [study_dir / "winner.json", study_dir / "winner" / "winner.json"]


def winner_input_size(study_dir: Path) -> int | None:
    """The study winner's input side in pixels, None before a winner exists."""
    for p in _winner_files(Path(study_dir)):
        if p.is_file():
            size = json.loads(p.read_text()).get("image_size")
            return int(size) if size else None
    return None


def record_gate_version(study_dir: Path, model: GateModel) -> list[Path]:
    """Write the gate's version into the study's winner.json copies (those that exist)."""
    written = []
    for p in _winner_files(Path(study_dir)):
        if p.is_file():
            info = json.loads(p.read_text())
            info["gate"] = {"version": model.version, "path": GATE_DIR_NAME}
            p.write_text(json.dumps(info, indent=1))
            written.append(p)
    return written


def fit_study_gate(
    study_dir: Path,
    data_dir: Path | None = None,
    cfg: GateFitConfig | None = None,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
) -> GateModel:
    """The study workflow's gate step: fit into ``<study>/gate`` and record its version in
    winner.json. Returns the fitted model (``.version``, ``.info['calibration']``)."""
    size = winner_input_size(study_dir)
    model = fit_gate(Path(study_dir) / GATE_DIR_NAME, data_dir, cfg, cache_dir, input_size=size)
    record_gate_version(study_dir, model)
    return model


def main(argv: list[str] | None = None) -> int:
    """``run_study.py gate fit --study results/<study>``: one JSON summary line."""
    ap = argparse.ArgumentParser(prog="run_study.py gate", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser(
        "fit",
        help="fit the input gate into <study>/gate",
        description="Fit the input gate into <study>/gate.",
    )
    p.add_argument("--study", type=Path, required=True, help="results/<study> folder")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="chest X-ray folder in the Kaggle layout <root>/<split>/{NORMAL,PNEUMONIA}/ "
        f"(env {DATA_DIR_ENV}; default: %(default)s)",
    )
    for f in fields(GateFitConfig):
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default),
            default=f.default,
            help=f.metadata["help"] + " (default: %(default)s)",
        )
    a = ap.parse_args(argv)
    if not a.study.is_dir():
        raise FileNotFoundError(f"no study folder {a.study}")
    cfg = GateFitConfig(**{f.name: getattr(a, f.name) for f in fields(GateFitConfig)})
    model = fit_study_gate(a.study, a.data_dir, cfg)
    summary = {"gate": str(a.study / GATE_DIR_NAME), "version": model.version}
    print(json.dumps(summary | {k: model.info[k] for k in ("rule", "rule_trials", "n_fit")}))
    print(json.dumps(model.info["calibration"], indent=1), file=sys.stderr)
    return 0
