"""A finalist under the hospital shift: calibration, operating point, refer band, heat-map.

For each finalist (each family's best and the winner) on its own preprocessing:

* the **shift sample** (each validation image once, under one seeded random corruption;
  what every trial was scored on) and the **shift grid** (a seeded, class-balanced subset
  of validation under every corruption x severity) are predicted;
* **temperature scaling** is fitted on clean validation and the shift sample together
  (both are validation images; clean validation alone is near-perfect and would only
  sharpen the probabilities), with the ECE before and after on each;
* the **threshold** comes from :func:`study.select.operating_point.choose_threshold_shift`
  on calibrated probabilities, clean validation and the grid;
* the **refer band** is split-conformal on the calibrated shift sample at 95 % coverage;
* the **robustness table**: per condition, AUC and sensitivity/specificity at the threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from study.data.datasets import StudyData
from study.data.preprocess import PreprocessConfig
from study.data.shift import CONDITIONS, build_shift_sample, build_shift_set
from study.search.trial_log import exact_roc_auc
from study.select.calibration import apply_temperature, ece, fit_temperature, reliability
from study.select.conformal import refer_band
from study.select.operating_point import choose_threshold_shift
from study.select.stats import threshold_table

COVERAGE = 0.95  # refer band: target coverage of the conformal prediction sets
GRID_IMAGES = 160  # validation images per shift-grid condition (half per class)


def grid_paths(paths: list[str], labels: np.ndarray, seed: int, n: int = GRID_IMAGES) -> list[str]:
    """A seeded subset of up to ``n`` validation images, balanced between the classes."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for c in (0, 1):
        idx = np.flatnonzero(np.asarray(labels) == c)
        out += [paths[i] for i in rng.permutation(idx)[: n // 2]]
    return sorted(out)


class ShiftScorer:
    """Predicts one model on the shift sample and grid of its preprocessing."""

    def __init__(self, data: StudyData, pre: PreprocessConfig, seed: int, predict: Any) -> None:
        self.view, self.pre, self.seed, self.predict = data.at(pre), pre, seed, predict
        self.cache_dir = data.cache_dir

    def _labels(self, paths: list[str]) -> np.ndarray:
        label_of = dict(zip(self.view.val.paths, self.view.val.labels.tolist(), strict=True))
        return np.array([label_of[p] for p in paths], np.int32)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        s = build_shift_sample(self.view.val.paths, self.pre, self.cache_dir, self.seed)
        return self._labels(s.paths), self.predict(s.images)

    def grid(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        chosen = grid_paths(self.view.val.paths, self.view.val.labels, self.seed)
        grid = build_shift_set(chosen, self.pre, self.cache_dir / "grid", self.seed)
        y = self._labels(grid.paths)
        return {f"{c}/{s}": (y, self.predict(grid.images((c, s)))) for c, s in CONDITIONS}


def _calibration(y_val, p_val, y_s, p_s, t: float) -> dict[str, Any]:
    cal = lambda p: apply_temperature(p, t)  # noqa: E731
    return {
        "temperature": t,
        "fitted_on": "clean validation + shift sample",
        "ece_before": ece(y_val, p_val),
        "ece_after": ece(y_val, cal(p_val)),
        "shift_ece_before": ece(y_s, p_s),
        "shift_ece_after": ece(y_s, cal(p_s)),
        "reliability_before": reliability(y_val, p_val),
        "reliability_after": reliability(y_val, cal(p_val)),
    }


def robustness_table(grid: dict[str, tuple[np.ndarray, np.ndarray]], threshold: float) -> list:
    """One row per condition: AUC and sensitivity/specificity at the threshold."""
    rows = []
    for name, (y, p) in grid.items():
        corruption, severity = name.split("/")
        at = threshold_table(y, p, [threshold])[0]
        rows.append(
            {
                "corruption": corruption,
                "severity": int(severity),
                "auc": exact_roc_auc(y, p),
                "sensitivity": at["sensitivity"],
                "specificity": at["specificity"],
                "n": int(len(y)),
            }
        )
    return rows


def operating_point(
    scorer: ShiftScorer, y_val: np.ndarray, p_val: np.ndarray, min_sensitivity: float
) -> dict[str, Any]:
    """Temperature, threshold, refer band and robustness rows of one finalist."""
    y_s, p_s = scorer.sample()
    t = fit_temperature(np.concatenate([y_val, y_s]), np.concatenate([p_val, p_s]))
    grid = {k: (y, apply_temperature(p, t)) for k, (y, p) in scorer.grid().items()}
    op = choose_threshold_shift(y_val, apply_temperature(p_val, t), grid, min_sensitivity)
    band = refer_band(y_s, apply_temperature(p_s, t), COVERAGE)
    return {
        "threshold": op.threshold,
        "threshold_rule": op.rule,
        "clean_threshold": op.clean_threshold,
        "threshold_table": op.table,
        "calibration": _calibration(y_val, p_val, y_s, p_s, t),
        "refer_band": band.to_dict(),
        "shift_sample": {"auc": exact_roc_auc(y_s, p_s), "n": int(len(y_s))},
        "robustness": robustness_table(grid, op.threshold),
    }


def referral_on(band: dict[str, Any], y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Refer rate and the coverage of the decided labels on a labelled set (the carved test)."""
    if len(y) == 0:
        return {}
    low, high = band.get("low"), band.get("high")
    inside = np.zeros(len(p), bool) if low is None else (p >= low) & (p <= high)
    correct = (p >= threshold).astype(int) == np.asarray(y)
    return {
        "refer_rate": float(inside.mean()),
        # Coverage of the conformal sets: a referred image's set holds both classes.
        "coverage": float((inside | correct).mean()),
        "accuracy_decided": float(correct[~inside].mean()) if (~inside).any() else None,
        "n": int(len(y)),
    }
