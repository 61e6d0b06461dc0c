"""Pick the winner on validation, set its threshold on validation, test it once, export it."""

from __future__ import annotations

import csv
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from study.data.datasets import SplitArrays, StudyData
from study.data.preprocess import PreprocessConfig
from study.data.records import CLASS_NAMES
from study.search.pipeline import eval_dataset
from study.search.trial_log import DEFAULT_OBJECTIVE, load_trials, objective
from study.select import compare, stats
from study.select.calibration import apply_temperature
from study.select.ensemble import (
    best_candidate,
    candidate_ensembles,
    is_ensemble,
    load_ensemble_model,
)
from study.select.model_io import copy_export, export_winner
from study.select.robustness import ShiftScorer, operating_point, referral_on

if TYPE_CHECKING:  # the config is passed down; the selection stage never imports it at run time
    from study.config import StudyConfig

SUMMARY_NAME = "summary.json"
PACKAGES = (
    "tensorflow-cpu",
    "keras",
    "keras-tuner",
    "numpy",
    "opencv-python-headless",
    "scikit-learn",
)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def predict(model: keras.Model, split: SplitArrays, batch_size: int) -> np.ndarray:
    if len(split.labels) == 0:
        return np.zeros(0)
    return (
        model.predict(eval_dataset(split.images, split.labels, batch_size), verbose=0)
        .reshape(-1)
        .astype(np.float64)
    )


def write_predictions(path: Path, split: SplitArrays, probs: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "patient", "subtype", "label", "probability_pneumonia"])
        for r, p in zip(split.records, probs, strict=True):
            w.writerow([r.path, r.patient, r.subtype, r.label, f"{p:.6f}"])


def best_per_family(
    trials: list[dict[str, Any]], kind: str = DEFAULT_OBJECTIVE
) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for t in trials:
        if t["family"] not in best or objective(t, kind) > objective(best[t["family"]], kind):
            best[t["family"]] = t
    return best


def winning_trial(trials: list[dict[str, Any]], kind: str = DEFAULT_OBJECTIVE) -> dict[str, Any]:
    """The best single trial by the objective, chosen on validation only (finish_study also
    lets ensembles of the top trials compete: :func:`study.select.ensemble.best_candidate`)."""
    return max(best_per_family(trials, kind).values(), key=lambda t: objective(t, kind))


def trial_preprocess_of(cfg: StudyConfig, record: dict[str, Any]) -> PreprocessConfig:
    """The preprocessing a trial (or ensemble) was trained on; the study's for older trials."""
    saved = record.get("preprocess")
    return PreprocessConfig.from_dict(saved) if saved else cfg.preprocess


def model_info(
    cfg: StudyConfig,
    data: StudyData,
    trial: dict[str, Any],
    fam_info: dict[str, Any],
    skipped: dict[str, str],
) -> dict[str, Any]:
    """What winner.json records for one exported model: enough to reload, rescore and trace it."""
    fam = trial["family"]
    return {
        "study": cfg.name,
        "version": f"{cfg.name}-{fam}-{trial['trial_id']}-{data.fingerprint[:8]}",
        "class_names": list(CLASS_NAMES),
        "threshold": fam_info["threshold"],
        "threshold_rule": fam_info["threshold_rule"],
        "calibration": _without_curves(fam_info["calibration"]),
        "refer_band": fam_info["refer_band"],
        "preprocess": trial_preprocess_of(cfg, trial).to_dict(),
        "image_size": trial_preprocess_of(cfg, trial).image_size,
        "augment": trial.get("augment", "standard"),
        "objective": cfg.objective,
        "input": "float32 (N, S, S, 1) in [0, 1] from study.data.preprocess.load_for_model",
        "family": fam,
        "trial": fam_info["trial"],
        "hyperparameters": trial["hyperparameters"],
        "weights": fam_info["weights"],
        "dtype_policy": trial.get("dtype_policy", "float32"),
        "validation": fam_info["val"],
        "test": fam_info["test"],
        "test_source": data.plan.test_source,
        "selection": f"best {cfg.objective} over all trials and top-k ensembles (validation "
        "and the shift sample built from it); the test split was used only to evaluate, "
        "never to select a model, a threshold, a temperature or a refer band",
        "data_fingerprint": data.fingerprint,
        "split_sizes": data.plan.sizes(),
        "skipped_families": skipped,
        "packages": package_versions(),
        "seed": cfg.seed,
    }


def family_comparisons(
    test: SplitArrays, probs: dict[str, np.ndarray], families: dict[str, Any]
) -> dict[str, Any] | None:
    """Every pair of families on the test split: patient-clustered tests first, per-image
    McNemar/DeLong second (:func:`study.select.compare.compare_families`, as in the report).
    None with fewer than two families or an empty test split."""
    if len(probs) < 2 or len(test.labels) == 0:
        return None
    preds = {
        f: {"file": test.paths, "patient": test.groups, "y": test.labels, "p": p}
        for f, p in probs.items()
    }
    return compare.compare_families(preds, {f: families[f]["threshold"] for f in probs})


def finish_study(
    cfg: StudyConfig, data: StudyData, skipped: dict[str, str], weights_used: dict[str, str]
) -> dict[str, Any]:
    """Evaluate and export each family's best, so families can be compared on any data;
    export the overall best (by the objective, on validation only) as the winner. Returns
    the summary, which the caller completes and saves with :func:`write_summary`."""
    study_dir = cfg.study_dir
    trials = load_trials(study_dir)
    if not trials:
        raise RuntimeError("no trial finished: nothing to choose a winner from")
    families: dict[str, Any] = {}
    infos: dict[str, dict[str, Any]] = {}
    test_probs: dict[str, np.ndarray] = {}
    for fam, t in best_per_family(trials, cfg.objective).items():
        print(f"finalist {fam}-{t['trial_id']}: shift grid, calibration, threshold", flush=True)
        model = keras.saving.load_model(Path(t["dir"]) / "best.keras")
        weights = weights_used.get(fam, "none (trained from scratch)")
        families[fam], test_probs[fam] = score_candidate(
            cfg, data, model, t, study_dir / "families" / fam, weights
        )
        # families/<fam>/winner/ is this family's best, loadable like the winner itself.
        infos[fam] = model_info(cfg, data, t, families[fam], skipped)
        export_winner(model, infos[fam], study_dir / "families" / fam)
    # Ensembles of the top trials compete on the same objective (study.select.ensemble).
    ensembles = candidate_ensembles(trials, kind=cfg.objective)
    best = best_candidate(trials, ensembles, cfg.objective)
    win_fam = best["family"]
    if is_ensemble(best):
        infos[win_fam], families[win_fam] = export_ensemble(cfg, data, best, skipped)
    else:
        copy_export(study_dir / "families" / win_fam, study_dir)  # the same files, not re-exported
    return {
        "winner": infos[win_fam],
        "objective": cfg.objective,
        "families": families,
        "ensembles": [e.record() for e in ensembles],
        "skipped": skipped,
        "comparisons": family_comparisons(data.test, test_probs, families),
        "n_trials": len(trials),
        # A resumed study's true cost: the training time of every trial, whichever run did it.
        "trial_seconds": sum(t.get("seconds", 0.0) for t in trials),
    }


def _without_curves(cal: dict[str, Any]) -> dict[str, Any]:
    """winner.json keeps the calibration numbers; the reliability curves go to the report."""
    return {k: v for k, v in cal.items() if not k.startswith("reliability")}


def score_candidate(
    cfg: StudyConfig,
    data: StudyData,
    model: Any,
    record: dict[str, Any],
    out_dir: Path,
    weights: str,
) -> tuple[dict[str, Any], np.ndarray]:
    """A finalist on its own preprocessing: temperature, threshold and refer band chosen on
    validation and its shift sets, then val and test metrics (calibrated probabilities)
    and prediction CSVs in ``out_dir``; returns that entry and its test probabilities."""
    view = data.at(trial_preprocess_of(cfg, record))
    val_p, test_p = (
        predict(model, view.val, cfg.batch_size),
        predict(model, view.test, cfg.batch_size),
    )
    scorer = ShiftScorer(data, view.preprocess, cfg.seed, lambda x: _predict_images(model, x, cfg))
    op = operating_point(scorer, view.val.labels, val_p, cfg.min_sensitivity)
    t = op["calibration"]["temperature"]
    val_c, test_c = apply_temperature(val_p, t), apply_temperature(test_p, t)
    write_predictions(out_dir / "val_predictions.csv", view.val, val_c)
    write_predictions(out_dir / "test_predictions.csv", view.test, test_c)
    threshold = op["threshold"]
    has_test = len(view.test.labels) > 0
    entry = op | {
        "trial": f"{record['family']}-{record['trial_id']}",
        "val": stats.binary_metrics(view.val.labels, val_c, threshold),
        "test": stats.binary_metrics(view.test.labels, test_c, threshold) if has_test else {},
        "refer_test": referral_on(op["refer_band"], view.test.labels, test_c, threshold),
        "weights": weights,
    }
    return entry, test_c


def _predict_images(model: Any, images: np.ndarray, cfg: StudyConfig) -> np.ndarray:
    labels = np.zeros(len(images), np.int32)
    return predict(model, SplitArrays([], images, labels), cfg.batch_size)


def export_ensemble(
    cfg: StudyConfig, data: StudyData, record: dict[str, Any], skipped: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the winning ensemble as one model, set its operating point on validation, test
    it once and export it as the study's winner; returns its winner.json (with ``members``)
    and its finalist entry."""
    model = load_ensemble_model(record)
    fam_info, _ = score_candidate(
        cfg,
        data,
        model,
        record,
        cfg.study_dir / "families" / record["family"],
        "members' own (see members)",
    )
    info = model_info(cfg, data, record, fam_info, skipped) | {"members": record["members"]}
    export_winner(model, info, cfg.study_dir)
    return info, fam_info


def write_summary(study_dir: Path, summary: dict[str, Any]) -> Path:
    """results/<study>/summary.json, the report's record of every family and the winner.

    The only writer of that file: the workflow calls it once, after adding this run's
    wall time to what :func:`finish_study` returned.
    """
    path = Path(study_dir) / SUMMARY_NAME
    path.write_text(json.dumps(summary, indent=1, default=str))
    return path
