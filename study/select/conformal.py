"""Split-conformal "refer band": where the model should refer an X-ray instead of guessing.

Split conformal prediction (Vovk et al.; Angelopoulos & Bates 2021, "A gentle
introduction") turns any probability into prediction *sets* with a coverage guarantee:
if the calibration images and a new image are exchangeable, the set holds the true class
with probability >= 1 - alpha, whatever the model. For a binary classifier:

* nonconformity score of a calibration image: s = 1 - p(true class), where
  p(PNEUMONIA) = p and p(NORMAL) = 1 - p;
* q = the ceil((n + 1)(1 - alpha)) / n empirical quantile of the n scores (the
  ``"higher"`` order statistic, i.e. the ceil((n+1)(1-alpha))-th smallest score); when
  that rank exceeds n (too few calibration images) q = 1 and every set holds both classes;
* the set for a new p: {c : 1 - p_c <= q}, i.e. PNEUMONIA when p >= 1 - q and NORMAL
  when p <= q.

Both classes are in the set exactly when 1 - q <= p <= q, which is non-empty only when
q >= 0.5: that interval is the refer band (label UNCERTAIN, "refer to a radiologist").
When q < 0.5 the model was confident and right on nearly every calibration image; the
band is empty (``low`` and ``high`` are None) and nothing is referred. Then a p in
(q, 1 - q) gets an *empty* set (neither class reaches the conformal level). By the
coverage guarantee that happens for at most a fraction alpha of images; such images keep
the threshold decision rather than being referred, so a near-perfect model is not made to
refer the rare mid-range case it was never calibrated on (document, not hide: the report
can count them).

The calibration set is meant to be the shift validation set (validation images under
corruptions), on the same (temperature-calibrated) probability scale the winner serves.
Only numpy loads with this module (the service reads bands through
:mod:`study.select.model_io`); the validation helpers of :mod:`study.select.stats` load
when a band is fitted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

METHOD = "split conformal, score 1 - p(true class)"


@dataclass(frozen=True)
class ReferBand:
    """The probability interval [low, high] labelled UNCERTAIN; None/None when empty."""

    low: float | None
    high: float | None
    coverage_target: float
    n_calibration: int
    q: float

    @property
    def empty(self) -> bool:
        return self.low is None

    def contains(self, p: Any) -> np.ndarray:
        """True where p is inside [low, high] (both ends included): those are referred."""
        pp = np.asarray(p, dtype=np.float64)
        if self.empty:
            return np.zeros(pp.shape, dtype=bool)
        return (pp >= self.low) & (pp <= self.high)

    def to_dict(self) -> dict[str, Any]:
        """The winner.json ``refer_band`` entry."""
        return {**asdict(self), "method": METHOD}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferBand:
        """Read a winner.json ``refer_band`` entry (extra keys such as ``method`` ignored)."""
        low, high = d.get("low"), d.get("high")
        return cls(
            None if low is None else float(low),
            None if high is None else float(high),
            float(d["coverage_target"]),
            int(d.get("n_calibration", 0)),
            float(d.get("q", high if high is not None else 0.0)),
        )


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest score; 1.0 (no information) when that rank > n.

    ``coverage`` is 1 - alpha; the tiny tolerance keeps e.g. 20 * 0.95 from rounding up to 20.
    """
    n = scores.size
    rank = math.ceil((n + 1) * coverage - 1e-9)
    if rank > n:
        return 1.0
    return float(np.sort(scores)[rank - 1])


def refer_band(y_cal: Any, p_cal: Any, coverage: float = 0.95) -> ReferBand:
    """Fit the refer band on calibration labels and P(pneumonia) (see the module doc)."""
    from study.select.stats import _as_labels, _as_scores

    if not 0.0 < coverage < 1.0:
        raise ValueError("coverage must be in (0, 1)")
    y = _as_labels(y_cal)
    p = _as_scores(p_cal, y.size)
    if y.size == 0:
        raise ValueError("refer_band needs calibration images")
    scores = 1.0 - np.where(y == 1, p, 1.0 - p)
    q = conformal_quantile(scores, coverage)
    low, high = (1.0 - q, q) if q >= 0.5 else (None, None)
    return ReferBand(low, high, coverage, int(y.size), q)


def prediction_sets(p: Any, q: float) -> np.ndarray:
    """(n, 2) booleans: column 0 NORMAL in the set (p <= q), column 1 PNEUMONIA (p >= 1 - q)."""
    pp = np.asarray(p, dtype=np.float64).ravel()
    return np.stack([pp <= q, pp >= 1.0 - q], axis=1)
