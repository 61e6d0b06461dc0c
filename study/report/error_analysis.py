"""What the winner got wrong on the test split, and what its errors have in common.

The report's error section is built here:

* counts of correct and wrong calls per class and per subtype (bacteria and
  virus come from the Kermany file names, see :func:`study.data.records.patient_and_subtype`);
* a gallery of misclassified test X-rays (false negatives and false positives
  apart) with the original image, the probability and a Grad-CAM overlay of
  the winner. Model inputs come from :func:`study.data.preprocess.load_for_model`
  with the winner's own :class:`~study.data.preprocess.PreprocessConfig`, so the
  heatmap explains exactly what the model saw at test time;
* effect sizes (:func:`study.select.stats.effect_size`) of image properties (intensity,
  contrast, sharpness, original size) between errors and correct calls, *within
  each class*: NORMAL and PNEUMONIA X-rays differ in these properties already,
  so pooling both classes would mostly measure the class mix of the errors;
* how much of each heatmap falls on the lungs (:func:`study.report.gradcam.fraction_in_region`
  with the stated :func:`study.report.gradcam.central_lung_mask` prior).
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import stats as sps

from study.data.preprocess import PreprocessConfig, load_for_model
from study.data.preview import grey_preview
from study.data.records import ImageRecord
from study.select import stats
from study.select.stats import fmt_p

#: Gallery cap per kind (false negatives, false positives). The official test
#: split has 624 images (234 NORMAL, 390 PNEUMONIA), so even a model that gets
#: every image wrong shows all its errors; only much larger test sets are cut.
GALLERY_CAP = 400
#: Correct calls whose heatmaps are computed as the comparison group for "heat on the lungs".
CORRECT_SAMPLE = 120
#: Seed of that sample, so a rebuilt report shows the same numbers.
SAMPLE_SEED = 0
THUMB_WIDTH = 176

#: (key in the feature dict, label in the report, unit/format hint)
FEATURES = (
    ("mean", "mean intensity", "0-1"),
    ("std", "contrast (intensity std)", "0-1"),
    ("sharpness", "sharpness (Laplacian variance)", ""),
    ("megapixels", "original size (megapixels)", "MP"),
)


@dataclass
class Case:
    """One test image with the winner's call."""

    file: str
    patient: str
    subtype: str
    label: int
    prob: float
    pred: int

    @property
    def correct(self) -> bool:
        return self.label == self.pred

    @property
    def kind(self) -> str:
        return ("TN", "FP", "FN", "TP")[2 * self.label + self.pred]


@dataclass
class ErrorAnalysis:
    """Everything the template's error section shows (JSON-friendly except the images)."""

    n: int
    threshold: float
    counts_by_class: list[dict[str, Any]]
    counts_by_subtype: list[dict[str, Any]]
    subtype_test: dict[str, Any] | None
    features: list[dict[str, Any]]
    feature_note: str
    gallery: dict[str, list[dict[str, Any]]]
    not_shown: dict[str, int]
    heat: dict[str, Any] | None
    summary: list[str]
    problems: list[str] = field(default_factory=list)


def resolve(path: str, bases: Sequence[Path] = ()) -> str:
    """An image path as stored by the study, made to work from here.

    The study stores paths as given on its command line, often relative to the
    directory it ran in (the repository); the report may be rebuilt from elsewhere.
    """
    if Path(path).is_file() or Path(path).is_absolute():
        return path
    for base in bases:
        cand = Path(base) / path
        if cand.is_file():
            return str(cand)
    return path


def read_predictions(path: Path, threshold: float, bases: Sequence[Path] = ()) -> list[Case]:
    """families/<fam>/test_predictions.csv -> cases at the given (validation-chosen) threshold."""
    out = []
    with Path(path).open() as f:
        for row in csv.DictReader(f):
            p = float(row["probability_pneumonia"])
            out.append(
                Case(
                    resolve(row["file"], bases),
                    row.get("patient", ""),
                    row.get("subtype", "unknown") or "unknown",
                    int(row["label"]),
                    p,
                    int(p >= threshold),
                )
            )
    return out


# --------------------------------------------------------------------------- counts


def _count_rows(cases: Sequence[Case], key: str) -> list[dict[str, Any]]:
    groups: dict[str, list[Case]] = {}
    for c in cases:
        k = ("NORMAL", "PNEUMONIA")[c.label] if key == "class" else c.subtype
        groups.setdefault(k, []).append(c)
    rows = []
    for k in sorted(groups):
        g = groups[k]
        wrong = sum(not c.correct for c in g)
        rows.append(
            {
                "group": k,
                "n": len(g),
                "correct": len(g) - wrong,
                "wrong": wrong,
                "error_rate": wrong / len(g) if g else None,
            }
        )
    return rows


def subtype_test(cases: Sequence[Case]) -> dict[str, Any] | None:
    """Fisher's exact test: are viral pneumonias missed more (or less) often than bacterial?"""
    pn = [c for c in cases if c.label == 1]
    bact = [c for c in pn if c.subtype == "bacteria"]
    vir = [c for c in pn if c.subtype == "virus"]
    if not bact or not vir:
        return None
    table = [
        [sum(not c.correct for c in bact), sum(c.correct for c in bact)],
        [sum(not c.correct for c in vir), sum(c.correct for c in vir)],
    ]
    res = sps.fisher_exact(table)
    return {
        "table": table,
        "miss_bacteria": table[0][0] / len(bact),
        "miss_virus": table[1][0] / len(vir),
        "n_bacteria": len(bact),
        "n_virus": len(vir),
        "p_value": float(res.pvalue),
    }


# --------------------------------------------------------------------------- image features


def image_features(cases: Sequence[Case], cache_dir: Path | None) -> dict[str, dict[str, float]]:
    """Intensity, contrast, sharpness and size per file, measured by the data audit.

    Re-uses the audit's per-file cache (same measurements as audit.json and the
    intensity figure), so a rerun reads no image twice. Unreadable files are left out.
    """
    from study.data.audit import audit_dataset

    records = [
        ImageRecord(c.file, c.label, c.patient, c.subtype, "test", "test")
        for c in cases
        if Path(c.file).is_file()
    ]
    if not records:
        return {}
    rep = audit_dataset(records, workers=1, progress=False, cache_dir=cache_dir)
    out = {}
    for r, row in zip(records, rep.rows, strict=True):
        if row.ok:
            out[r.path] = {
                "mean": row.mean,
                "std": row.std,
                "sharpness": row.sharpness,
                "megapixels": row.width * row.height / 1e6,
                "width": row.width,
                "height": row.height,
            }
    return out


def _finite(v: Any) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _effect_row(label: str, comparison: str, a: list[float], b: list[float]) -> dict[str, Any]:
    row: dict[str, Any] = {"feature": label, "comparison": comparison, "n_a": len(a), "n_b": len(b)}
    if len(a) < 2 or len(b) < 2:
        row["note"] = "too few images in a group"
        return row
    if np.ptp(np.concatenate([a, b])) == 0:
        row |= {"mean_a": a[0], "mean_b": b[0], "note": "no variation (all images alike)"}
        return row
    es = stats.effect_size(a, b)
    for k in ("mean_a", "mean_b", "median_a", "median_b", "cohens_d", "p_value", "rank_biserial"):
        row[k] = _finite(es[k])
    return row


def feature_effects(
    cases: Sequence[Case], feats: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    """Errors vs correct calls per feature: FN vs TP, FP vs TN, then all errors vs all correct."""
    groups = (
        ("missed pneumonia (FN) vs detected (TP)", "FN", "TP"),
        ("false alarms (FP) vs correct normals (TN)", "FP", "TN"),
        ("all errors vs all correct (classes pooled)", None, None),
    )
    rows = []
    for key, label, _ in FEATURES:
        for comparison, ka, kb in groups:
            if ka is None:
                a = [feats[c.file][key] for c in cases if c.file in feats and not c.correct]
                b = [feats[c.file][key] for c in cases if c.file in feats and c.correct]
            else:
                a = [feats[c.file][key] for c in cases if c.file in feats and c.kind == ka]
                b = [feats[c.file][key] for c in cases if c.file in feats and c.kind == kb]
            rows.append(_effect_row(label, comparison, a, b))
    return rows


# --------------------------------------------------------------------------- gallery + Grad-CAM


def display_image(path: str) -> np.ndarray | None:
    """The original X-ray for the eye (windowed to 8 bits, aspect kept); None if unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return grey_preview(data, width=THUMB_WIDTH)


def model_inputs(paths: Sequence[str], cfg: PreprocessConfig) -> tuple[np.ndarray, list[int]]:
    """The winner's inputs via the one preprocessing path; indices of files that loaded."""
    xs, ok = [], []
    for i, p in enumerate(paths):
        try:
            xs.append(load_for_model(Path(p).read_bytes(), cfg))
        except (OSError, ValueError):
            continue
        ok.append(i)
    if not xs:
        return np.zeros((0, cfg.image_size, cfg.image_size, 1), np.float32), ok
    return np.stack(xs).astype(np.float32), ok


def heatmaps(model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps and the model's probabilities for the same inputs (a consistency check)."""
    from study.report import gradcam

    if len(x) == 0:
        return np.zeros((0, *x.shape[1:3]), np.float32), np.zeros(0)
    probs = np.asarray(model.predict(x, batch_size=32, verbose=0), np.float64).reshape(-1)
    return gradcam.gradcam(model, x, batch_size=32), probs


def _overlay_rgb(x: np.ndarray, hm: np.ndarray) -> np.ndarray:
    """Heatmap on the model's own input, upscaled to thumbnail size for the eye."""
    from study.report import gradcam

    gray = (np.clip(x[..., 0], 0, 1) * 255).astype(np.uint8)
    big = cv2.resize(gray, (THUMB_WIDTH, THUMB_WIDTH), interpolation=cv2.INTER_LINEAR)
    return gradcam.overlay(big, hm, alpha=0.4)


def _heat_summary(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    v = np.asarray(values)
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v))}


# --------------------------------------------------------------------------- the whole section


@dataclass
class _GradcamPass:
    """What one Grad-CAM pass over the shown errors and the correct sample yields."""

    gallery: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"FN": [], "FP": []})
    lung_fraction: dict[str, list[float]] = field(
        default_factory=lambda: {"FN": [], "FP": [], "correct": []}
    )
    n_empty: dict[str, int] = field(default_factory=lambda: {"FN": 0, "FP": 0, "correct": 0})
    chance: float | None = None  # share of the image the lung prior covers


def analyse(
    cases: list[Case],
    threshold: float,
    model: Any | None,
    preprocess: PreprocessConfig | None,
    cache_dir: Path | None,
) -> ErrorAnalysis:
    """Counts, gallery with Grad-CAM, feature effect sizes and heat-in-lungs for the winner."""
    problems: list[str] = []
    feats = _measure_features(cases, cache_dir, problems)
    shown, not_shown = _errors_to_show(cases)
    correct = [c for c in cases if c.correct]
    sample = random.Random(SAMPLE_SEED).sample(correct, min(CORRECT_SAMPLE, len(correct)))
    if model is not None and preprocess is not None:
        cam = _gradcam_pass([*shown["FN"], *shown["FP"]], sample, model, preprocess, problems)
    else:
        cam = _GradcamPass()
        problems.append("no winner model: the gallery shows no Grad-CAM overlays")
    features = feature_effects(cases, feats)
    analysis = ErrorAnalysis(
        n=len(cases),
        threshold=threshold,
        counts_by_class=_count_rows(cases, "class"),
        counts_by_subtype=_count_rows(cases, "subtype"),
        subtype_test=subtype_test(cases),
        features=features,
        feature_note=(
            f"Cohen's d (pooled SD; |d| about 0.2 small, 0.5 medium, 0.8 large) and a two-sided "
            f"Mann-Whitney U test per row; {len(_within_class(features))} within-class tests, "
            "p-values not adjusted for multiple comparisons (the summary applies Bonferroni). "
            "The grey pooled rows are context only."
        ),
        gallery=_complete_gallery(cam.gallery, shown),
        not_shown=not_shown,
        heat=_heat_in_lungs(cam),
        summary=[],
        problems=problems,
    )
    analysis.summary = summarise(analysis, cases)
    return analysis


def _measure_features(
    cases: Sequence[Case], cache_dir: Path | None, problems: list[str]
) -> dict[str, dict[str, float]]:
    """:func:`image_features`, but a failure only costs the feature rows, not the section."""
    feats: dict[str, dict[str, float]] = {}
    try:
        feats = image_features(cases, cache_dir)
    except Exception as e:  # noqa: BLE001 - the report must render without this part
        problems.append(f"image features could not be measured: {type(e).__name__}: {e}")
    missing = sum(c.file not in feats for c in cases)
    if missing:
        problems.append(f"{missing} test files could not be read for the feature analysis")
    return feats


def _errors_to_show(cases: Sequence[Case]) -> tuple[dict[str, list[Case]], dict[str, int]]:
    """False negatives and false positives for the gallery, capped, and how many were cut."""
    by_conf = {
        # Most confident mistakes first: those are the ones worth a radiologist's look.
        "FN": sorted((c for c in cases if c.kind == "FN"), key=lambda c: c.prob),
        "FP": sorted((c for c in cases if c.kind == "FP"), key=lambda c: -c.prob),
    }
    shown = {k: v[:GALLERY_CAP] for k, v in by_conf.items()}
    return shown, {k: len(by_conf[k]) - len(shown[k]) for k in by_conf}


def _gradcam_pass(
    errors: list[Case],
    sample: list[Case],
    model: Any,
    preprocess: PreprocessConfig,
    problems: list[str],
) -> _GradcamPass:
    """Heatmaps of the shown errors and the correct sample: overlays and heat on the lungs."""
    from study.report import gradcam
    from study.report.figures import jpeg_picture

    out = _GradcamPass()
    todo = [*errors, *sample]
    x, ok = model_inputs([c.file for c in todo], preprocess)
    if len(ok) < len(todo):
        problems.append(f"{len(todo) - len(ok)} images could not be preprocessed for Grad-CAM")
    try:
        hms, probs = heatmaps(model, x)
    except Exception as e:  # noqa: BLE001 - show the gallery without heatmaps
        problems.append(f"Grad-CAM failed: {type(e).__name__}: {e}")
        return out
    if not ok:
        return out
    mask = gradcam.central_lung_mask(*hms.shape[1:3])
    out.chance = float(mask.mean())
    _check_reproduced([abs(probs[j] - todo[i].prob) for j, i in enumerate(ok)], problems)
    for j, i in enumerate(ok):
        c = todo[i]
        group = c.kind if i < len(errors) else "correct"  # errors first, then correct calls
        # An all-zero map (no positive evidence) has no location: counted, not scored 0.
        empty = float(hms[j].max()) <= 0.0
        frac = None if empty else gradcam.fraction_in_region(hms[j], mask)
        if empty:
            out.n_empty[group] += 1
        else:
            out.lung_fraction[group].append(frac)
        if group != "correct":
            overlay = jpeg_picture(_overlay_rgb(x[j], hms[j]))
            out.gallery[c.kind].append(_card(c, overlay, frac))
    return out


def _check_reproduced(diffs: list[float], problems: list[str]) -> None:
    """winner.keras must give the saved test probabilities, else heatmaps explain another model."""
    if max(diffs) > 0.02:
        problems.append(
            f"winner.keras reproduces the saved test probabilities only to within "
            f"{max(diffs):.3f} (expected < 0.02): check that winner.keras and "
            "test_predictions.csv come from the same run"
        )


def _complete_gallery(
    gallery: dict[str, list[dict[str, Any]]], shown: dict[str, list[Case]]
) -> dict[str, list[dict[str, Any]]]:
    """Every shown error gets a card (without overlay if it had no heatmap) and a thumbnail."""
    from study.report.figures import jpeg_picture

    for k in ("FN", "FP"):
        have = {g["file"] for g in gallery[k]}
        gallery[k] += [_card(c, None, None) for c in shown[k] if c.file not in have]
        order = {c.file: i for i, c in enumerate(shown[k])}
        gallery[k].sort(key=lambda g: order[g["file"]])
        for g in gallery[k]:
            img = display_image(g["file"])
            g["thumb"] = jpeg_picture(img) if img is not None else None
    return gallery


def _heat_in_lungs(cam: _GradcamPass) -> dict[str, Any] | None:
    """How much heat falls on the lung prior, errors vs correct calls; None without heatmaps."""
    if cam.chance is None:
        return None
    vals = cam.lung_fraction
    errs = vals["FN"] + vals["FP"]
    return {
        "chance": cam.chance,
        "FN": _heat_summary(vals["FN"]),
        "FP": _heat_summary(vals["FP"]),
        "errors": _heat_summary(errs),
        "correct": _heat_summary(vals["correct"]),
        "effect": _effect_row("heat on the lungs", "errors vs correct", errs, vals["correct"]),
        "outside_errors": sum(v < cam.chance for v in errs),
        "empty": cam.n_empty,
        "empty_errors": cam.n_empty["FN"] + cam.n_empty["FP"],
    }


def _within_class(features: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feature rows with a test that compares errors and correct calls within one class."""
    return [r for r in features if r.get("p_value") is not None and "pooled" not in r["comparison"]]


def _card(c: Case, overlay: Any, frac: float | None) -> dict[str, Any]:
    return {
        "file": c.file,
        "name": Path(c.file).name,
        "patient": c.patient,
        "subtype": c.subtype,
        "prob": c.prob,
        "overlay": overlay,
        "lung_fraction": frac,
    }


def _size_word(d: float) -> str:
    a = abs(d)
    return "negligible" if a < 0.2 else "small" if a < 0.5 else "medium" if a < 0.8 else "large"


def summarise(a: ErrorAnalysis, cases: Sequence[Case]) -> list[str]:
    """A few plain sentences; every claim carries its number and test."""
    n_fn = sum(c.kind == "FN" for c in cases)
    n_fp = sum(c.kind == "FP" for c in cases)
    n_pos = sum(c.label == 1 for c in cases)
    n_neg = len(cases) - n_pos
    wrong = n_fn + n_fp
    out = [
        f"At threshold {a.threshold:.3f} the winner got {wrong} of {len(cases)} test X-rays wrong: "
        f"{n_fn} of {n_pos} pneumonias missed (false negatives) and {n_fp} of {n_neg} normal "
        f"X-rays called pneumonia (false positives)."
    ]
    if wrong == 0:
        return [*out, "There are no errors to analyse on this test split."]
    st = a.subtype_test
    if st:
        sig = "a significant" if st["p_value"] < 0.05 else "no significant"
        out.append(
            f"Missed pneumonias by subtype: {st['miss_bacteria']:.0%} of {st['n_bacteria']} "
            f"bacterial vs {st['miss_virus']:.0%} of {st['n_virus']} viral; {sig} difference "
            f"(Fisher's exact test {fmt_p(st['p_value'])})."
        )
    return out + _feature_sentences(a.features) + _heat_sentences(a.heat)


def _feature_sentences(features: Sequence[dict[str, Any]]) -> list[str]:
    """The largest within-class feature difference, judged with a Bonferroni correction."""
    tested = _within_class(features)
    if not tested:
        return []
    n_tests = len(tested)
    big = max(tested, key=lambda r: abs(r["cohens_d"] or 0))
    bonf = 0.05 / n_tests
    direction = "higher" if (big["cohens_d"] or 0) > 0 else "lower"
    holds = (
        f"significant even after a Bonferroni correction for {n_tests} tests (p < {bonf:.4f})"
        if big["p_value"] < bonf
        else "significant only without correction for multiple tests"
        if big["p_value"] < 0.05
        else "not statistically significant"
    )
    out = [
        f"The largest within-class difference: {big['feature']} is {direction} in "
        f"{big['comparison'].split(' vs ')[0]} ({_size_word(big['cohens_d'])} effect, "
        f"d = {big['cohens_d']:+.2f}, Mann-Whitney {fmt_p(big['p_value'])}); this is {holds}."
    ]
    if not any(r["p_value"] < bonf for r in tested):
        out.append(
            "No image property separates errors from correct calls after correcting for "
            "multiple tests: the errors are not explained by exposure, contrast, sharpness "
            "or resolution alone."
        )
    return out


def _heat_sentences(h: dict[str, Any] | None) -> list[str]:
    """Where the errors' Grad-CAM heat lies, against the lung prior's chance level."""
    out = []
    if h and h.get("errors"):
        corr = h.get("correct")
        cmp = f" vs {corr['mean']:.0%} for {corr['n']} correct calls" if corr else ""
        eff = h["effect"]
        p_txt = f" (Mann-Whitney {fmt_p(eff['p_value'])})" if eff.get("p_value") is not None else ""
        out.append(
            f"Grad-CAM: on average {h['errors']['mean']:.0%} of the heat of the misclassified "
            f"X-rays lies inside the lung prior{cmp}{p_txt}; the prior covers "
            f"{h['chance']:.0%} of the image, so that is what a heatmap blind to anatomy "
            f"would score. {h['outside_errors']} of {h['errors']['n']} errors score below it."
        )
    if h and h["empty_errors"]:
        out.append(
            f"{h['empty_errors']} misclassified X-rays have an empty Grad-CAM map (no region "
            "pushes the score up), so no location can be read from them; they are left out "
            "of the heat-on-the-lungs numbers."
        )
    return out
