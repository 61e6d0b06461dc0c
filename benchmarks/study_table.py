"""The README's study table: families, best single and best ensemble, each objective's winner.

    python -m benchmarks.study_table --study results/main [--samples ../shared/data/samples]

For each candidate (each family's best single trial, the best ensemble, and the winner each
``--objective`` would choose, all re-ranked from saved predictions, no training) it reports
the exact ROC-AUC on clean validation, on the shift sample, on the test split carved from
train, and on the 16 full-resolution originals of the official Kermany val split
(``<samples>/kermany_full_res/val``), read through the serving preprocessing. A second
table gives the exported winner on those two sets at the threshold of each rule (the
shift rule it uses, and the clean-validation rule), with its refer rate.
Results: ``benchmarks/results/study_table.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, load_average, write
from study.paths import DEFAULT_SAMPLES_DIR

OFFICIAL_VAL = Path("kermany_full_res") / "val"


def candidates(trials: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Label -> trial or ensemble record, ranked from saved predictions only."""
    from study.search import OBJECTIVE_NAMES
    from study.search.trial_log import objective
    from study.select.ensemble import best_candidate, candidate_ensembles
    from study.select.winner import best_per_family

    out = {f"best {fam}": t for fam, t in best_per_family(trials).items()}
    ensembles = [e.record() for e in candidate_ensembles(trials)]
    if ensembles:
        out["best ensemble"] = max(ensembles, key=objective)
    for kind in OBJECTIVE_NAMES:
        pick = best_candidate(trials, candidate_ensembles(trials, kind=kind), kind)
        out[f"winner by {kind}"] = pick
    return out


def labelled_files(folder: Path, split: str | None = None) -> tuple[list[str], np.ndarray]:
    """Files and labels (PNEUMONIA = 1) of a Kaggle-layout folder, through the study's own
    scanner (optionally one source split)."""
    from study.data.records import scan

    recs = [r for r in scan(folder, require_train=False) if split in (None, r.source_split)]
    return [r.path for r in recs], np.array([r.label for r in recs])


def _model(record: dict[str, Any]) -> Any:
    import keras

    import study.models.layers  # noqa: F401  (custom layers)
    from study.select.ensemble import is_ensemble, load_ensemble_model

    if is_ensemble(record):
        return load_ensemble_model(record)
    return keras.saving.load_model(Path(record["dir"]) / "best.keras", compile=False)


class Inputs:
    """Model inputs of a file list, decoded once per preprocessing config (every candidate
    of one config shares them)."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self._by_key: dict[str, np.ndarray] = {}

    def at(self, pre: Any) -> np.ndarray:
        from study.data.preprocess import load_for_model

        if pre.key() not in self._by_key:
            self._by_key[pre.key()] = np.stack(
                [load_for_model(Path(f).read_bytes(), pre) for f in self.files]
            )
        return self._by_key[pre.key()]


def _auc(model: Any, inputs: Inputs, y: np.ndarray, pre: Any) -> float | None:
    from study.search.trial_log import exact_roc_auc

    if not inputs.files:
        return None
    return exact_roc_auc(y, model.predict(inputs.at(pre), batch_size=32, verbose=0).reshape(-1))


def candidate_rows(study: Path, samples: Path) -> list[dict[str, Any]]:
    """One row per candidate (the same model is scored once)."""
    from study.data.preprocess import PreprocessConfig
    from study.search.trial_log import load_trials

    trials = load_trials(study)
    saved = json.loads((study / "config.json").read_text())
    config = saved["config"]
    test_files = json.loads((study / "splits.json").read_text())["files"].get("test", [])
    data_dir = Path(saved.get("resume_key", config)["data_dir"])  # resolved when it was run
    label_of = dict(zip(*labelled_files(data_dir), strict=True))
    test_y = np.array([label_of[f] for f in test_files])
    val_files, val_y = labelled_files(samples / OFFICIAL_VAL.parent, "val")
    test_in, val_in = Inputs(test_files), Inputs(val_files)
    base = config["preprocess"]
    scored: dict[str, tuple[float | None, float | None]] = {}
    rows = []
    for label, rec in candidates(trials).items():
        # An ensemble's name (ens-topK) repeats across objectives: its members identify it.
        name = " + ".join(rec.get("members") or [f"{rec['family']}-{rec['trial_id']}"])
        pre = PreprocessConfig.from_dict(rec.get("preprocess") or base)
        if name not in scored:
            model = _model(rec)
            scored[name] = (
                _auc(model, test_in, test_y, pre),
                _auc(model, val_in, val_y, pre),
            )
        rows.append(
            {
                "candidate": label,
                "model": name,
                "input": f"{pre.image_size} px {pre.normalise} {rec.get('augment', '')}".strip(),
                "val AUC": rec["val"].get("auc_exact"),
                "shift AUC": (rec.get("shift") or {}).get("auc_exact"),
                "carved test AUC": scored[name][0],
                f"official val AUC (n={len(val_files)})": scored[name][1],
            }
        )
    return rows


def _scored_sets(study: Path, samples: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The exported winner's calibrated probabilities on carved test and the official val
    originals (labels, probabilities)."""
    import csv

    from study.select.model_io import load_winner

    with (study / "families" / _winner_family(study) / "test_predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    test = (
        np.array([int(r["label"]) for r in rows]),
        np.array([float(r["probability_pneumonia"]) for r in rows]),
    )
    winner = load_winner(study / "winner")
    files, y = labelled_files(samples / OFFICIAL_VAL.parent, "val")
    p = winner.predict_batch(np.stack([winner.prepare(Path(f).read_bytes()) for f in files]))
    return {"carved test": test, f"official val originals (n={len(files)})": (y, p)}


def _winner_family(study: Path) -> str:
    return json.loads((study / "winner.json").read_text())["family"]


def winner_rows(study: Path, samples: Path) -> list[dict[str, Any]]:
    """The exported winner under both threshold rules (the shift rule it uses, and the
    clean-validation rule) with its refer band, on carved test and the official val."""
    from study.select.stats import binary_metrics

    info = json.loads((study / "winner.json").read_text())
    entry = json.loads((study / "summary.json").read_text())["families"][info["family"]]
    band = info.get("refer_band") or {}
    rules = {"shift rule (used)": info["threshold"], "clean rule": entry["clean_threshold"]}
    rows = []
    for where, (y, p) in _scored_sets(study, samples).items():
        inside = (
            np.zeros(len(p), bool)
            if band.get("low") is None
            else (p >= band["low"]) & (p <= band["high"])
        )
        for rule, t in rules.items():
            m = binary_metrics(y, p, t)
            rows.append(
                {
                    "set": where,
                    "rule": rule,
                    "threshold": t,
                    "accuracy": m["accuracy"],
                    "sensitivity": m["sensitivity"],
                    "specificity": m["specificity"],
                    "AUC": m.get("auc"),
                    "refer rate": float(inside.mean()),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.study_table", description=__doc__)
    p.add_argument("--study", type=Path, default=Path("results/main"))
    p.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES_DIR)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    load = load_average()
    rows = candidate_rows(a.study, a.samples)
    wins = winner_rows(a.study, a.samples)
    write("study_table", rows, {"winner": wins}, a.out_dir, load, more_tables=[wins])


if __name__ == "__main__":
    main()
