"""An operating point that survives the hospital shift.

:func:`study.select.stats.choose_threshold` fixes the threshold on clean validation data.
When validation is near-perfect, the highest threshold that keeps 95 % sensitivity there
sits just under the positives' scores, often close to 1; on images from another
hospital the positives' scores drop and sensitivity collapses. The shift validation set
(the validation images under corruptions at several severities) is our stand-in for
those hospitals.

Rule (:func:`choose_threshold_shift`): the highest threshold whose sensitivity is at
least the floor on the clean validation set AND on the pooled shift set (every condition
together, each weighted by its number of images; all conditions hold the same images, so
this is the mean over conditions).

Why this rule:

* Sensitivity is the screening contract, so it is the constraint; the floor must hold on
  the hospital we trained on (clean) and on the average unknown one (pooled shift).
* Requiring it on *every* condition instead (worst case) lets the harshest corruption,
  one no real scanner produces, drive the threshold towards 0 and specificity with it.
* Among the thresholds meeting both floors, the highest one maximises specificity on
  every condition at once (specificity never rises as the threshold falls), hence also
  the mean specificity across conditions: there is nothing else to trade.
* Consequences stated plainly: the shift threshold is never above the clean rule's; it
  is lower exactly when the shift pulls the positives' scores down. A shift that only
  pushes the negatives' scores up cannot be answered by any sensitivity-floor rule
  without giving up sensitivity: that cost shows in the table as shifted specificity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from study.select.stats import choose_threshold, threshold_table

#: One shift condition's labels and P(pneumonia), e.g. {"gaussian_noise/3": (y, p)}.
ShiftSet = dict[str, tuple[Any, Any]]


@dataclass(frozen=True)
class OperatingPoint:
    """The shift-aware threshold, its rule in words, and the table the report shows."""

    threshold: float
    rule: str
    clean_threshold: float
    table: list[dict[str, Any]]


def _pooled(shift: ShiftSet) -> tuple[np.ndarray, np.ndarray]:
    if not shift:
        raise ValueError("choose_threshold_shift needs at least one shift condition")
    ys = [np.asarray(y).ravel() for y, _ in shift.values()]
    ps = [np.asarray(p, dtype=np.float64).ravel() for _, p in shift.values()]
    return np.concatenate(ys), np.concatenate(ps)


def _row(t: float, y_val: Any, p_val: Any, shift: ShiftSet, pooled: tuple) -> dict[str, Any]:
    """Clean and shifted sensitivity/specificity at one threshold."""
    clean = threshold_table(y_val, p_val, [t])[0]
    pool = threshold_table(*pooled, [t])[0]
    per = [threshold_table(y, p, [t])[0] for y, p in shift.values()]
    sens = [r["sensitivity"] for r in per if r["sensitivity"] is not None]
    spec = [r["specificity"] for r in per if r["specificity"] is not None]
    return {
        "threshold": float(t),
        "clean_sensitivity": clean["sensitivity"],
        "clean_specificity": clean["specificity"],
        "shift_sensitivity": pool["sensitivity"],
        "shift_specificity": pool["specificity"],
        "worst_condition_sensitivity": min(sens) if sens else None,
        "mean_condition_specificity": float(np.mean(spec)) if spec else None,
    }


def choose_threshold_shift(
    y_val: Any, p_val: Any, shift: ShiftSet, min_sensitivity: float = 0.95
) -> OperatingPoint:
    """The highest threshold with sensitivity >= the floor on clean AND pooled shift data.

    Sensitivity only falls as the threshold rises, so each set's feasible thresholds are
    those up to its own :func:`choose_threshold` cut-off, and the answer is the smaller of
    the two (see the module doc for why this rule). The table has one row per candidate
    (clean rule, shift rule, 0.5) with clean, pooled-shift, worst-condition sensitivity and
    mean per-condition specificity.
    """
    pooled = _pooled(shift)
    t_clean, _ = choose_threshold(y_val, p_val, min_sensitivity)
    t_shift_only, _ = choose_threshold(*pooled, min_sensitivity)
    t = min(t_clean, t_shift_only)
    row = _row(t, y_val, p_val, shift, pooled)
    binding = "the shifted images" if t_shift_only < t_clean else "clean validation"
    rule = (
        f"Threshold {t:.4f} is the highest cut-off with sensitivity of at least "
        f"{min_sensitivity:.2f} both on clean validation (n = {np.asarray(y_val).size}; "
        f"achieved {row['clean_sensitivity']:.3f}) and on the {len(shift)} shift conditions "
        f"pooled (n = {pooled[0].size}; achieved {row['shift_sensitivity']:.3f}); "
        f"{binding} set the limit. The clean-only rule gives {t_clean:.4f}. Specificity: "
        f"{row['clean_specificity']:.3f} clean, {row['shift_specificity']:.3f} shifted."
    )
    cands = sorted({t, t_clean, 0.5})
    table = [_row(c, y_val, p_val, shift, pooled) for c in cands]
    return OperatingPoint(t, rule, t_clean, table)
