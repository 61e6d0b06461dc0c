"""results/<study>/report.html: which model is best, why, and how sure we are.

The report is rebuilt from the artifacts a study saved (config, splits,
audit, trials, family predictions, summary, winner), never by training, so
``python run_study.py report --study results/<study>`` regenerates it at
any time. It is one self-contained HTML file: every figure is an inline PNG
or JPEG data URI and the only script is a few lines of plain JS for sorting
tables, so it opens offline and can be sent as a single attachment.

Statistics come from :mod:`study.select.stats` (patient-level bootstrap CIs,
plain-language verdicts) and :mod:`study.select.compare` (patient-clustered paired
comparisons first, per-image McNemar and DeLong as secondary); Grad-CAM from
:mod:`study.report.gradcam`; the error section from :mod:`study.report.error_analysis`.
A missing artifact (a study that died half-way) blanks its section with a
note instead of failing the whole report.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from study.fmt import fmt_duration
from study.paths import REPO
from study.report import figures as rf
from study.search import OBJECTIVES
from study.search.trial_log import (
    DEFAULT_OBJECTIVE,
    VERDICT_RULE,
    fit_verdict,
    load_trials,
    objective,
    read_history,
)
from study.select import compare, stats
from study.select.ensemble import ENSEMBLE_FAMILY, candidate_ensembles

TEMPLATES = REPO / "report_templates"
REPORT_NAME = "report.html"
#: Data figures written by the data stage, in the order the report shows them.
DATA_FIGURES = (
    ("samples", "Healthy lungs (top) beside pneumonia (bottom)"),
    ("class_balance", "Class balance per split"),
    ("intensity", "Intensity, contrast and sharpness per class"),
    ("sizes", "Original image sizes per class"),
    ("preprocessing", "The preprocessing steps, one X-ray after each step"),
)
CI_METRICS = ("accuracy", "sensitivity", "specificity", "auc")
TABLE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
N_BOOT = compare.N_BOOT
ALPHA = compare.ALPHA
#: (key in the metrics dict, label in the winner's metric table)
WINNER_METRICS = (
    ("accuracy", "accuracy"),
    ("sensitivity", "sensitivity (recall)"),
    ("specificity", "specificity"),
    ("precision", "precision (PPV)"),
    ("f1", "F1"),
    ("auc", "ROC-AUC"),
    ("pr_auc", "PR-AUC (average precision)"),
)


# --------------------------------------------------------------------------- loading


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_preds(path: Path) -> dict[str, Any] | None:
    """A family's predictions CSV as aligned arrays (file order as written)."""
    if not path.is_file():
        return None
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {
        "file": [r["file"] for r in rows],
        "patient": [r.get("patient") or r["file"] for r in rows],
        "subtype": [r.get("subtype", "") for r in rows],
        "y": np.array([int(r["label"]) for r in rows], np.int64),
        "p": np.array([float(r["probability_pneumonia"]) for r in rows], np.float64),
    }


def _fmt_hp(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


# --------------------------------------------------------------------------- sections


def data_section(study_dir: Path) -> dict[str, Any]:
    """Split sizes, the audit's findings and how they were resolved, the data figures."""
    splits = _json(study_dir / "splits.json")
    audit = _json(study_dir / "audit.json")
    figures = []
    for name, caption in DATA_FIGURES:
        p = study_dir / "figures" / f"{name}.png"
        uri = rf.data_uri(p.read_bytes()) if p.is_file() else None
        figures.append({"name": name, "caption": caption, "uri": uri})
    return {
        "splits": _splits_summary(splits) if splits else None,
        "audit": _audit_summary(audit) if audit else None,
        "figures": figures,
    }


def _splits_summary(splits: dict[str, Any]) -> dict[str, Any]:
    rows = [
        {
            "split": s,
            "normal": size.get("NORMAL", 0),
            "pneumonia": size.get("PNEUMONIA", 0),
            "total": size.get("total", 0),
            "patients": len(splits.get("patients", {}).get(s, [])),
        }
        for s, size in splits.get("sizes", {}).items()
    ]
    return {
        "rows": rows,
        "test_source": splits.get("test_source", "unknown"),
        "notes": splits.get("notes", []),
    }


def _audit_summary(audit: dict[str, Any]) -> dict[str, Any]:
    """Duplicate clusters, corrupt files and patient leakage before and after the split."""
    exact = audit.get("exact_duplicates", [])
    near = audit.get("near_duplicates", [])
    source = audit.get("cross_split", {}).get("source", {})
    after = audit.get("after_split", {}).get("plan", {})
    examples = [{"kind": "exact", "files": [Path(p).name for p in c[:4]]} for c in exact[:5]]
    examples += [
        {
            "kind": f"near (distance <= {c.get('max_distance')})",
            "files": [Path(p).name for p in c.get("files", [])[:4]],
        }
        for c in near[:5]
    ]
    return {
        "n_files": audit.get("n_files"),
        "counts": audit.get("counts", {}),
        "exact_clusters": len(exact),
        "exact_files": sum(len(c) for c in exact),
        "near_clusters": len(near),
        "near_files": sum(len(c.get("files", [])) for c in near),
        "near_rule": audit.get("near_duplicate_rule", ""),
        "spanning_patients": audit.get("clusters_spanning_patients", 0),
        "corrupt": audit.get("corrupt", []),
        "source_patients": len(source.get("patients", [])),
        "source_dups": len(source.get("duplicates", [])),
        "after_patients": len(after.get("patients", [])) if after else None,
        "after_dups": len(after.get("duplicates", [])) if after else None,
        "examples": examples,
        "notes": audit.get("notes", []),
    }


def objective_of(summary: dict[str, Any] | None) -> str:
    """The objective the study ranked by (val_auc for studies that predate the choice)."""
    return (summary or {}).get("objective") or DEFAULT_OBJECTIVE


def leaderboard_section(study_dir: Path, summary: dict[str, Any] | None) -> dict[str, Any]:
    """Every trial with its curves, ranked by the study's objective; skipped families."""
    kind = objective_of(summary)
    trials = load_trials(study_dir)
    rows = [_trial_row(t) | {"objective": objective(t, kind)} for t in trials]
    records = [e.record() for e in candidate_ensembles(trials, kind=kind)]
    rows += [_ensemble_row(r) | {"objective": objective(r, kind)} for r in records]
    # The winner is the trial with the highest objective, so row 1 is always the winner.
    rows.sort(key=lambda r: -r["objective"])
    for i, r in enumerate(rows, start=1):
        r["rank"] = i
    gaps = [abs(r["auc"] - r["auc_exact"]) for r in rows if None not in (r["auc"], r["auc_exact"])]
    return {
        "rows": rows,
        "skipped": _skipped_families(study_dir, summary, {r["family"] for r in rows}),
        "verdict_rule": VERDICT_RULE,
        "max_auc_gap": max(gaps) if gaps else None,
        "objective": kind,
        "objective_help": OBJECTIVES[kind],
    }


def _trial_row(t: dict[str, Any]) -> dict[str, Any]:
    """One leaderboard row: hyperparameters, stopping, validation metrics, fit verdict, curve."""
    tid = f"{t['family']}-{t['trial_id']}"
    hist = read_history(Path(t["dir"]) / "history.csv")
    val = t.get("val", {})
    exact = val.get("auc_exact")
    # Judge from the curves with the rule quoted in the report, not the one stored at
    # training time, so the leaderboard and its stated rule always agree.
    verdict, reason = (
        fit_verdict(hist, exact) if hist else (t.get("verdict", "-"), t.get("verdict_reason", ""))
    )
    curve = None
    if hist:
        png = rf.training_curves(hist, f"{tid}: train vs val", int(t.get("best_epoch", 0)))
        curve = rf.data_uri(png)
    run, planned = t.get("epochs_run", 0), t.get("epochs_planned", 0)
    kept = f"kept epoch {t.get('best_epoch')}"
    stop = (
        f"stopped at epoch {run} of {planned}; {kept}"
        if t.get("stopped_early")
        else (f"ran all {planned}; {kept}")
    )
    return {
        "id": tid,
        "anchor": "curve-" + "".join(ch if ch.isalnum() or ch in "_-" else "-" for ch in tid),
        "family": t["family"],
        "hp": [(k, _fmt_hp(v)) for k, v in sorted(t.get("hyperparameters", {}).items())],
        "epochs_run": run,
        "epochs_planned": planned,
        "best_epoch": t.get("best_epoch"),
        "stopped_early": bool(t.get("stopped_early")),
        "stop_text": stop,
        "shift_auc": (t.get("shift") or {}).get("auc_exact"),
        "input": _input_text(t),
        "auc": val.get("auc"),
        "auc_exact": exact,
        "precision": val.get("precision"),
        "recall": val.get("recall"),
        "specificity": val.get("specificity"),
        "seconds": t.get("seconds"),
        "time": fmt_duration(t.get("seconds")),
        "params": t.get("params"),
        "verdict": verdict,
        "verdict_reason": reason,
        "curve": curve,
    }


def _input_text(t: dict[str, Any]) -> str:
    """A trial's input in a few words: size, normalisation, augmentation."""
    pre = t.get("preprocess") or {}
    if not pre:
        return "-"
    norm = pre.get("normalise", "?")
    if norm == "clahe":
        norm += f" {pre.get('clahe_clip')}"
    return f"{pre.get('image_size')} px, {norm}, {t.get('augment', 'standard')}"


def _ensemble_row(e: dict[str, Any]) -> dict[str, Any]:
    """A leaderboard row for an ensemble of the top trials (no curves: it was not trained)."""
    tid = f"{e['family']}-{e['trial_id']}"
    return {
        "id": tid,
        "anchor": "curve-" + tid,
        "family": e["family"],
        "members": e["members"],
        "hp": [("members", ", ".join(e["members"]))],
        "epochs_run": 0,
        "epochs_planned": 0,
        "best_epoch": None,
        "stopped_early": False,
        "stop_text": "not trained: the mean of its members' probabilities",
        "shift_auc": (e.get("shift") or {}).get("auc_exact"),
        "input": _input_text(e),
        "auc": e["val"]["auc"],
        "auc_exact": e["val"]["auc_exact"],
        "precision": None,
        "recall": None,
        "specificity": None,
        "seconds": e.get("seconds"),
        "time": fmt_duration(e.get("seconds")),
        "params": e.get("params"),
        "verdict": "-",
        "verdict_reason": "an average of trained models, judged by its members' curves",
        "curve": None,
    }


def _skipped_families(
    study_dir: Path, summary: dict[str, Any] | None, ran: set[str]
) -> dict[str, str]:
    """Families with no model and why: from the summary, else the configured ones that never ran."""
    skipped = (summary or {}).get("skipped") or {}
    if skipped:
        return skipped
    cfg = _json(study_dir / "config.json") or {}
    wanted = (cfg.get("config") or {}).get("families", [])
    return {f: "no finished trial (study interrupted?)" for f in wanted if f not in ran}


def _family_spread(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each family's objective over its trials (best, median, worst, IQR), best family first."""
    fams: dict[str, list[float]] = {}
    for r in rows:
        if math.isfinite(r["objective"]) and r["family"] != ENSEMBLE_FAMILY:
            fams.setdefault(r["family"], []).append(r["objective"])
    out = []
    for f, v in fams.items():
        q = np.percentile(v, [25, 75])
        out.append(
            {
                "family": f,
                "n": len(v),
                "best": max(v),
                "median": statistics.median(v),
                "worst": min(v),
                "iqr": float(q[1] - q[0]),
                "values": v,
            }
        )
    out.sort(key=lambda r: -r["best"])
    return out


def _ci(y: np.ndarray, p: np.ndarray, g: list[str], metric: str, thr: float) -> dict[str, Any]:
    try:
        ci = stats.bootstrap_ci(y, p, g, metric, threshold=thr, n_boot=N_BOOT, seed=0)  # type: ignore[arg-type]
    except ValueError as e:
        return {"metric": metric, "point": None, "lo": None, "hi": None, "note": str(e)}
    return ci.to_dict()


def compare_section(
    study_dir: Path, summary: dict[str, Any] | None, spread: list[dict[str, Any]]
) -> dict[str, Any]:
    """Families side by side on test: metrics, curves, confusion, calibration, CIs and tests."""
    fams_info = (summary or {}).get("families", {})
    order = [r["family"] for r in spread if r["family"] in fams_info]
    order += [f for f in fams_info if f not in order]
    colours = rf.family_colours(order)
    problems: list[str] = []
    preds = _test_predictions(study_dir, order, problems)
    out: dict[str, Any] = {
        "spread": spread,
        "spread_fig": _spread_figure(spread),
        "side": [_side_row(f, fams_info[f]) for f in order],
        "families": order,
        "problems": problems,
    }
    if not preds:
        out.update(curves=None, confusions=[], calibration=None, cis=[], verdicts=[])
        out.update(clustered=[], tests=[], clustered_info=None)
        return out
    thr = {f: float(fams_info[f]["threshold"]) for f in preds}
    out |= _test_figures(preds, thr, colours)
    out |= _intervals(preds, thr, colours)
    cmp = compare.compare_families(preds, thr)
    problems += cmp["problems"]
    # "clustered" (patients resampled) is the primary comparison; "tests" (McNemar, DeLong)
    # the per-image, secondary one.
    out |= {"clustered": cmp["primary"], "tests": cmp["secondary"]}
    out["clustered_info"] = {k: cmp[k] for k in ("n_patients", "n_images", "n_boot")}
    out["verdicts"] = _overall_verdict(cmp, list(preds))
    return out


def _test_predictions(
    study_dir: Path, order: list[str], problems: list[str]
) -> dict[str, dict[str, Any]]:
    """Each family's saved test predictions; a missing or empty file is noted in problems."""
    preds: dict[str, dict[str, Any]] = {}
    for f in order:
        d = _read_preds(study_dir / "families" / f / "test_predictions.csv")
        if d is None or len(d["y"]) == 0:
            problems.append(f"{f}: no test predictions (families/{f}/test_predictions.csv)")
            continue
        preds[f] = d
    return preds


def _side_row(family: str, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "family": family,
        "trial": info.get("trial"),
        "threshold": info.get("threshold"),
        "weights": info.get("weights"),
        "val": info.get("val", {}),
        "test": info.get("test", {}),
    }


def _spread_figure(spread: list[dict[str, Any]]) -> rf.Picture | None:
    if not spread:
        return None
    fams = [r["family"] for r in spread]
    values = {r["family"]: r["values"] for r in spread}
    return rf.data_uri(rf.objective_spread(values, rf.family_colours(fams)))


def _test_figures(
    preds: dict[str, dict[str, Any]], thr: dict[str, float], colours: dict[str, str]
) -> dict[str, Any]:
    """ROC/PR overlay, one confusion matrix per family, calibration figure and table."""
    has_both = all(0 < d["y"].sum() < len(d["y"]) for d in preds.values())
    curves = {f: (d["y"], d["p"]) for f, d in preds.items()}
    confusions = [
        {
            "family": f,
            "uri": rf.data_uri(
                rf.confusion_matrix_fig(
                    stats.binary_metrics(d["y"], d["p"], thr[f])["confusion"],
                    f"{f} at threshold {thr[f]:.3f}",
                )
            ),
        }
        for f, d in preds.items()
    ]
    cal = {f: stats.calibration(d["y"], d["p"]) for f, d in preds.items()}
    return {
        "curves": rf.data_uri(rf.roc_pr_overlay(curves, thr, colours)) if has_both else None,
        "confusions": confusions,
        "calibration": rf.data_uri(rf.calibration_fig(cal, colours)),
        "calibration_table": [
            {"family": f, "brier": c["brier"], "ece": c.get("ece")} for f, c in cal.items()
        ],
    }


def _intervals(
    preds: dict[str, dict[str, Any]], thr: dict[str, float], colours: dict[str, str]
) -> dict[str, Any]:
    """Patient-level bootstrap CIs of each family's test metrics, with their forest plot."""
    cis = [
        {"family": f} | _ci(d["y"], d["p"], d["patient"], m, thr[f])
        for f, d in preds.items()
        for m in CI_METRICS
    ]
    return {
        "cis": cis,
        "ci_fig": rf.data_uri(rf.ci_forest(cis, colours)) if cis else None,
        "n_patients": {f: len(set(d["patient"])) for f, d in preds.items()},
        "n_images": {f: len(d["y"]) for f, d in preds.items()},
    }


def _overall_verdict(cmp: dict[str, Any], fams: list[str]) -> list[str]:
    """The statistics section's conclusion, from the patient-clustered (primary) tests."""
    if len(fams) < 2:
        return [
            f"Only one family ({fams[0] if fams else 'none'}) produced a model, so there is "
            "nothing to compare: the intervals above describe that model alone."
        ]
    tests = cmp["primary"]
    sig = [t for t in tests if t["significant"]]
    sig_holm = [t for t in tests if t["significant_holm"]]
    lines = [
        f"{len(tests)} patient-clustered paired comparisons between {len(fams)} families' best "
        f"models on the same {cmp['n_images']} test images from {cmp['n_patients']} patients; "
        f"{len(sig)} significant at {ALPHA:g} unadjusted, {len(sig_holm)} after Holm's "
        "correction for multiple tests."
    ]
    naive = sum(t["significant"] for t in cmp["secondary"])
    if naive > len(sig):  # first, so the last line (the overview's) stays the conclusion
        lines.insert(
            0,
            f"The per-image tests (McNemar, DeLong) call {naive} differences significant, but "
            "they count a child's several X-rays as independent evidence, so their p-values "
            "are too small; the patient-clustered tests are the ones to read.",
        )
    if not sig:
        lines.append(
            "No difference between the families is statistically significant: on this test "
            "split the data cannot tell them apart, whatever the ranking of point estimates."
        )
    return lines


def winner_section(
    study_dir: Path, winner: dict[str, Any] | None, test_source: str
) -> dict[str, Any] | None:
    """Threshold rule, threshold tables on val and test, metrics, and the selection caveat."""
    if not winner:
        return None
    fam = winner.get("family")
    thr = float(winner["threshold"])
    val = _read_preds(study_dir / "families" / fam / "val_predictions.csv")
    test = _read_preds(study_dir / "families" / fam / "test_predictions.csv")
    curve = None
    if val and 0 < val["y"].sum() < len(val["y"]):
        curve = rf.data_uri(rf.threshold_curve(val["y"], val["p"], thr, "validation"))
    validation, tested = winner.get("validation") or {}, winner.get("test") or {}
    return {
        "family": fam,
        "trial": winner.get("trial"),
        "version": winner.get("version"),
        "threshold": thr,
        "rule": winner.get("threshold_rule", ""),
        "selection": winner.get("selection", ""),
        "hyperparameters": [
            (k, _fmt_hp(v)) for k, v in sorted(winner.get("hyperparameters", {}).items())
        ],
        "weights": winner.get("weights"),
        "preprocess": winner.get("preprocess", {}),
        "table": _threshold_rows(val, test, thr),
        "curve": curve,
        "metrics": [
            {"label": label, "val": validation.get(key), "test": tested.get(key)}
            for key, label in WINNER_METRICS
        ],
        "val_conf": validation.get("confusion"),
        "test_conf": tested.get("confusion"),
        "carved": test_source == "carved from train",
        "test_source": test_source,
        "packages": winner.get("packages", {}),
        "fingerprint": winner.get("data_fingerprint"),
    }


def _threshold_rows(
    val: dict[str, Any] | None, test: dict[str, Any] | None, thr: float
) -> list[dict[str, Any]]:
    """Sensitivity, specificity, precision on val and test at fixed cut-offs and the chosen one."""
    ts = sorted({*TABLE_THRESHOLDS, round(thr, 6)})
    val_rows = stats.threshold_table(val["y"], val["p"], ts) if val and len(val["y"]) else []
    test_rows = stats.threshold_table(test["y"], test["p"], ts) if test and len(test["y"]) else []
    return [
        {
            "threshold": t,
            "chosen": abs(t - thr) < 1e-9 or t == round(thr, 6),
            "val": val_rows[i] if val_rows else None,
            "test": test_rows[i] if test_rows else None,
        }
        for i, t in enumerate(ts)
    ]


def robustness_section(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """Each finalist under the shift: heat-map rows, threshold table, calibration, refer band."""
    fams = {f: e for f, e in ((summary or {}).get("families") or {}).items() if e.get("robustness")}
    if not fams:
        return None
    names = list(fams)
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for f in names:
        for r in fams[f]["robustness"]:
            cells.setdefault((r["corruption"], r["severity"]), {})[f] = r
    rows = [{"corruption": c, "severity": s, "by": by} for (c, s), by in cells.items()]
    win = (summary or {}).get("winner", {}).get("family")
    entry = fams.get(win) or fams[names[0]]
    cal = entry.get("calibration") or {}
    diagram = None
    if cal.get("reliability_before") and cal.get("reliability_after"):
        png = rf.reliability_diagram(cal["reliability_before"], cal["reliability_after"])
        diagram = rf.data_uri(png)
    return {
        "finalists": names,
        "shift_auc": {f: (fams[f].get("shift_sample") or {}).get("auc") for f in names},
        "rows": rows,
        "winner": win if win in fams else names[0],
        "threshold_table": entry.get("threshold_table", []),
        "threshold": entry.get("threshold"),
        "rule": entry.get("threshold_rule", ""),
        "calibration": cal,
        "reliability": diagram,
        "band": entry.get("refer_band") or {},
        "refer_test": entry.get("refer_test") or {},
    }


def errors_section(study_dir: Path, winner: dict[str, Any] | None, cache_dir: Path | None) -> Any:
    """The winner's test errors: counts, gallery with Grad-CAM, what errors share."""
    from study.data.preprocess import PreprocessConfig
    from study.report import error_analysis as ea

    if not winner:
        return None
    path = study_dir / "families" / winner["family"] / "test_predictions.csv"
    if not path.is_file():
        return None
    bases = [Path.cwd(), REPO]
    cases = ea.read_predictions(path, float(winner["threshold"]), bases)
    if not cases:
        return None
    model, problems = None, []
    try:
        import keras

        import study.models.layers  # noqa: F401  (registers custom layers for deserialisation)

        model = keras.saving.load_model(study_dir / "winner.keras", compile=False)
    except Exception as e:  # noqa: BLE001 - the gallery still renders without heatmaps
        problems.append(f"winner.keras could not be loaded: {type(e).__name__}: {e}")
    cfg = PreprocessConfig.from_dict(winner["preprocess"]) if winner.get("preprocess") else None
    result = ea.analyse(cases, float(winner["threshold"]), model, cfg, cache_dir)
    result.problems = problems + result.problems
    return result


# --------------------------------------------------------------------------- rendering


def _environment() -> Any:
    import jinja2
    import markupsafe

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"], default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )

    def num(v: Any, digits: int = 3) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return f"{float(v):.{digits}f}"

    def pct(v: Any, digits: int = 1) -> str:
        return "-" if v is None else f"{100 * float(v):.{digits}f}%"

    def sortval(v: Any) -> str:
        return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else str(v)

    def img(pic: rf.Picture | None, alt: str, missing: str = "image not available") -> Any:
        if pic is None:
            return markupsafe.Markup('<div class="noimg">{}</div>').format(missing)
        return markupsafe.Markup('<img src="{}" width="{}" height="{}" alt="{}">').format(
            pic.uri, pic.width, pic.height, alt
        )

    env.filters.update(num=num, pct=pct, fmt_p=stats.fmt_p, sortval=sortval)
    env.globals["img"] = img
    return env


def build_context(study_dir: Path, include_errors: bool = True) -> dict[str, Any]:
    """Everything the template needs, from the saved artifacts only."""
    study_dir = Path(study_dir)
    summary = _json(study_dir / "summary.json")
    winner = _json(study_dir / "winner.json") or (summary or {}).get("winner")
    cfg_blob = _json(study_dir / "config.json") or {}
    cfg = cfg_blob.get("config", {})
    data = data_section(study_dir)
    test_source = (data["splits"] or {}).get("test_source") or (winner or {}).get(
        "test_source", "unknown"
    )
    board = leaderboard_section(study_dir, summary)
    spread = _family_spread(board["rows"])
    compare = compare_section(study_dir, summary, spread)
    cache_dir = Path(cfg["cache_dir"]) / "audit" if cfg.get("cache_dir") else None
    errors = errors_section(study_dir, winner, cache_dir) if include_errors else None
    return {
        "study": cfg.get("name") or study_dir.name,
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "winner_info": winner,
        "data": data,
        "board": board,
        "compare": compare,
        "winner": winner_section(study_dir, winner, test_source),
        "robustness": robustness_section(summary),
        "errors": errors,
        "test_source": test_source,
        "carved": test_source == "carved from train",
        "n_trials": sum(r["family"] != ENSEMBLE_FAMILY for r in board["rows"]),
        "stopped": (summary or {}).get("stopped", ""),
        "study_seconds": fmt_duration(
            (summary or {}).get("trial_seconds", (summary or {}).get("seconds"))
        ),
    }


def render(context: dict[str, Any]) -> str:
    return _environment().get_template("report.html.j2").render(**context)


def write_report(study_dir: Path) -> Path:
    """Render results/<study>/report.html from the study's saved artifacts; returns its path."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise FileNotFoundError(f"no study folder {study_dir}")
    text = render(build_context(study_dir))
    out = study_dir / REPORT_NAME
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)  # never leave a half-written report behind
    return out


__all__ = ["write_report", "build_context", "render"]
