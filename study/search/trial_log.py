"""Per-trial artifacts under results/<study>/trials/<trial>/ and the fit verdict."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from study.search import OBJECTIVE_NAMES

# The rule behind the verdict, stated once so the report can quote it.
VERDICT_RULE = (
    "no signal: the exact val AUC of the kept model is below 0.60, so it barely separates "
    "the classes (a collapsed, near-constant output gives 0.50); "
    "overfitting: after the best epoch, val loss rose more than 10% above its minimum while "
    "train loss kept falling, or train AUC exceeds val AUC by more than 0.05 at the best epoch; "
    "underfitting: the best val AUC and the train AUC are both below 0.90; otherwise good fit. "
    "Train metrics come from the augmented, class-balanced stream."
)


VAL_PREDICTIONS = "val_predictions.csv"
SHIFT_PREDICTIONS = "shift_predictions.csv"
DEFAULT_OBJECTIVE = OBJECTIVE_NAMES[0]


@dataclass(frozen=True)
class ShiftPredictions:
    """A model's probabilities on the shift sample: each file under its condition."""

    paths: list[str]
    conditions: list[tuple[str, int]]
    labels: np.ndarray
    probs: np.ndarray


def read_history(csv_path: Path) -> list[dict[str, float]]:
    """CSVLogger rows (appended across resumes), one per epoch, deduplicated by epoch."""
    if not csv_path.is_file():
        return []
    rows: dict[int, dict[str, float]] = {}
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            try:
                rows[int(row["epoch"])] = {k: float(v) for k, v in row.items() if v != ""}
            except (KeyError, ValueError):
                continue
    return [rows[e] for e in sorted(rows)]


def fit_verdict(history: list[dict[str, float]], exact_auc: float | None = None) -> tuple[str, str]:
    """('no signal' | 'overfitting' | 'underfitting' | 'good fit' | 'too short', reason).

    "No signal" comes first: a train/val gap says nothing about a model whose validation
    output does not separate the classes at all. It is judged on ``exact_auc`` (from the
    kept model's saved validation predictions) when given: Keras' binned AUC reads 0.5
    when every probability bunches above its top threshold, even for a model that ranks
    well.
    """
    if len(history) < 2:
        return "too short", "fewer than 2 epochs: no curve to judge"
    val_auc = np.array([h.get("val_auc", np.nan) for h in history])
    best = int(np.nanargmax(val_auc))
    signal = val_auc[best] if exact_auc is None or np.isnan(exact_auc) else exact_auc
    if signal < 0.60:
        return "no signal", (
            f"val AUC {signal:.3f}: validation outputs barely separate the classes"
        )
    val_loss = np.array([h.get("val_loss", np.nan) for h in history])
    loss = np.array([h.get("loss", np.nan) for h in history])
    tail = slice(best + 1, None)
    if (
        len(val_loss[tail])
        and np.nanmax(val_loss[tail]) > 1.10 * np.nanmin(val_loss)
        and (loss[-1] < loss[best])
    ):
        return "overfitting", (
            f"val loss rose to {np.nanmax(val_loss[tail]):.3f} (min {np.nanmin(val_loss):.3f}) "
            f"after epoch {best + 1} while train loss fell"
        )
    gap = history[best].get("auc", np.nan) - val_auc[best]
    if gap > 0.05:
        return "overfitting", f"train AUC exceeds val AUC by {gap:.3f} at the best epoch"
    if val_auc[best] < 0.90 and history[best].get("auc", 0.0) < 0.90:
        return "underfitting", f"best val AUC {val_auc[best]:.3f} and train AUC below 0.90"
    return "good fit", f"best val AUC {val_auc[best]:.3f} at epoch {best + 1}, gap {gap:+.3f}"


def objective(trial: dict[str, Any], kind: str = DEFAULT_OBJECTIVE) -> float:
    """The study's objective ``kind`` (see :data:`study.search.OBJECTIVES`) of a trial or
    ensemble record, from what its saved predictions gave.

    The winner, the leaderboard, the family spread and the progress lines all rank by
    this. Trials saved before the exact AUC was recorded fall back to Keras' binned AUC;
    trials without a shift score (older studies) rank by their clean AUC under every kind.
    """
    v = trial["val"].get("auc_exact")
    clean = float(v if v is not None else trial["val"].get("auc", float("-inf")))
    shift = (trial.get("shift") or {}).get("auc_exact")
    if kind == "val_auc" or shift is None:
        return clean
    if kind == "shift_auc":
        return float(shift)
    if kind == "mean_auc":
        return (clean + float(shift)) / 2
    raise ValueError(f"unknown objective {kind!r}; choose from {OBJECTIVE_NAMES}")


def exact_roc_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    return float(roc_auc_score(labels, probs)) if 0 < labels.sum() < len(labels) else None


def write_trial(
    trial_dir: Path,
    *,
    family: str,
    trial_id: str,
    hyperparameters: dict[str, Any],
    epochs_planned: int,
    seconds: float,
    params: int,
    val_paths: list[str],
    val_labels: np.ndarray,
    val_probs: np.ndarray,
    weights: str,
    worker: str = "single",
    precision: str = "float32",
    shift: ShiftPredictions | None = None,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write trial.json (+ val and shift predictions) next to history.csv; returns the
    summary. ``inputs`` records the trial's preprocessing, image size and augmentation."""
    history = read_history(trial_dir / "history.csv")
    exact_auc = exact_roc_auc(val_labels, val_probs)
    verdict, reason = fit_verdict(history, exact_auc)
    val_auc = [h.get("val_auc", float("nan")) for h in history]
    best = int(np.nanargmax(val_auc)) if history else -1
    summary = {
        "family": family,
        "trial_id": trial_id,
        "hyperparameters": hyperparameters,
        "epochs_run": len(history),
        "epochs_planned": epochs_planned,
        "best_epoch": best + 1,
        "stopped_early": len(history) < epochs_planned,
        # Keras' AUC is binned (it steers the search); the exact AUC from the saved
        # validation predictions is what the winner is chosen by.
        "val": {
            k[4:]: v for k, v in (history[best] if history else {}).items() if k.startswith("val_")
        }
        | {"auc_exact": exact_auc},
        "seconds": seconds,
        "params": params,
        "verdict": verdict,
        "verdict_reason": reason,
        "weights": weights,
        "worker": worker,
        "dtype_policy": precision,
        **(inputs or {}),
    }
    if shift is not None:
        summary["shift"] = {"auc_exact": exact_roc_auc(shift.labels, shift.probs)}
        write_shift_predictions(trial_dir, shift)
    write_val_predictions(trial_dir, val_paths, val_labels, val_probs)
    # Last: trial.json marks a finished trial, so its prediction files are complete.
    (trial_dir / "trial.json").write_text(json.dumps(summary, indent=1))
    return summary


def write_shift_predictions(trial_dir: Path, shift: ShiftPredictions) -> None:
    with (trial_dir / SHIFT_PREDICTIONS).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "corruption", "severity", "label", "probability_pneumonia"])
        for p, (c, sev), y, q in zip(
            shift.paths, shift.conditions, shift.labels, shift.probs, strict=True
        ):
            w.writerow([p, c, sev, int(y), f"{float(q):.6f}"])


def read_shift_predictions(trial_dir: Path) -> dict[str, tuple[int, float]] | None:
    """file -> (label, probability) on the shift sample, or None for an older trial."""
    path = trial_dir / SHIFT_PREDICTIONS
    if not path.is_file():
        return None
    with path.open() as f:
        return {
            r["file"]: (int(r["label"]), float(r["probability_pneumonia"]))
            for r in csv.DictReader(f)
        }


def write_val_predictions(
    trial_dir: Path, paths: list[str], labels: np.ndarray, probs: np.ndarray
) -> None:
    """A trial's validation predictions: what the objective, ensembles and reports read."""
    with (trial_dir / VAL_PREDICTIONS).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "probability_pneumonia"])
        for p, y, q in zip(paths, labels, probs, strict=True):
            w.writerow([p, int(y), f"{float(q):.6f}"])


def read_val_predictions(trial_dir: Path) -> dict[str, tuple[int, float]]:
    """file -> (label, probability) from :func:`write_val_predictions`'s file."""
    path = trial_dir / VAL_PREDICTIONS
    out: dict[str, tuple[int, float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["file"] in out:
                raise ValueError(f"{path}: file {row['file']!r} appears twice")
            out[row["file"]] = (int(row["label"]), float(row["probability_pneumonia"]))
    return out


def load_trials(study_dir: Path) -> list[dict[str, Any]]:
    """Every finished trial's summary, for the winner choice and the report."""
    out = []
    for p in sorted((study_dir / "trials").glob("*/trial.json")):
        d = json.loads(p.read_text())
        d["dir"] = str(p.parent)
        out.append(d)
    return out
