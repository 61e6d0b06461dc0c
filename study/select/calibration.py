"""Calibration of the winner's probability: temperature scaling, ECE, reliability bins.

A probability learned on one hospital means something else on another: a model that says
0.99 for nearly every validation image is over-confident wherever the images look a little
different. Temperature scaling (Guo et al. 2017) divides the model's logit by one number
T fitted on held-out data (T > 1 softens, T < 1 sharpens). It is monotone, so the ranking
(AUC) is unchanged; only what "0.8" means moves.

Everything here works from probabilities (the SavedModel outputs P(pneumonia), not a
logit): ``logit(p)`` is taken after clipping p to [EPS, 1 - EPS], so a saturated 1.0 maps
to a large finite logit instead of inf.

This module imports numpy only at load time (the service loads it through
:mod:`study.select.model_io`); SciPy and the validation helpers of :mod:`study.select.stats`
load when a fit or a score is asked for.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Probabilities are clipped to [EPS, 1 - EPS] before the logit (float64 keeps 1 - 1e-12).
EPS = 1e-12
#: The temperature is searched on log T in [log 0.05, log 20]: wide enough for any real model.
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))
#: Equal-width bins for the ECE and the reliability diagram (Guo et al. use 15).
N_BINS = 15


def _logit(p: Any) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """tanh form: no overflow warning for very negative logits."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def apply_temperature(p: Any, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): the calibrated probability (same shape as ``p``)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _sigmoid(_logit(p) / float(temperature))


def _nll(y: np.ndarray, z: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of sigmoid(z / T), computed on the logit scale (stable)."""
    s = z / temperature
    # -log sigmoid(s) = logaddexp(0, -s); -log(1 - sigmoid(s)) = logaddexp(0, s)
    return float(np.mean(np.where(y == 1, np.logaddexp(0.0, -s), np.logaddexp(0.0, s))))


def fit_temperature(y_true: Any, prob: Any) -> float:
    """T minimising the validation negative log-likelihood of sigmoid(logit(p) / T).

    Bounded scalar search on log T (:data:`LOG_T_BOUNDS`), so T stays positive and the
    search never wanders to a degenerate 0 or inf; a perfectly separated validation set
    drives T to the lower bound (as sharp as allowed), which is the honest answer there.
    """
    from scipy.optimize import minimize_scalar

    from study.select.stats import _as_labels, _as_scores

    y = _as_labels(y_true)
    z = _logit(_as_scores(prob, y.size))
    res = minimize_scalar(
        lambda log_t: _nll(y, z, math.exp(log_t)),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(res.x))


def reliability(y_true: Any, prob: Any, n_bins: int = N_BINS) -> dict[str, Any]:
    """Reliability-diagram data on the P(pneumonia) scale, in equal-width bins of [0, 1].

    Bin k holds the probabilities in (k/n, (k+1)/n] (the first bin also holds 0), the
    edges :func:`sklearn.calibration.calibration_curve` uses. Per bin: ``centres`` (bin
    mid-points), ``confidence`` (mean predicted P(pneumonia)), ``accuracy`` (observed share
    of pneumonia: how often the claim "P = confidence" came true) and ``counts``. Empty
    bins have count 0 and None for confidence and accuracy.
    """
    from study.select.stats import _as_labels, _as_scores

    y = _as_labels(y_true)
    p = _as_scores(prob, y.size)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(ids, minlength=n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(ids, weights=y, minlength=n_bins)
    full = counts > 0

    def per_bin(total: np.ndarray) -> list[float | None]:
        return [float(t / c) if c else None for t, c in zip(total, counts, strict=True)]

    return {
        "n_bins": n_bins,
        "centres": [float(c) for c in (edges[:-1] + edges[1:]) / 2],
        "confidence": per_bin(sum_p),
        "accuracy": per_bin(sum_y),
        "counts": [int(c) for c in counts],
        "ece": float(np.sum(np.abs(sum_y[full] - sum_p[full])) / y.size),
    }


def ece(y_true: Any, prob: Any, n_bins: int = N_BINS) -> float:
    """Expected calibration error: sum over bins of (count / n) * |accuracy - confidence|.

    Equal-width bins on P(pneumonia) (see :func:`reliability`): the gap between what the
    model claims and what happens, weighted by how many images make the claim.
    """
    return float(reliability(y_true, prob, n_bins)["ece"])


def calibration_info(y_true: Any, prob: Any, n_bins: int = N_BINS) -> dict[str, Any]:
    """The winner.json ``calibration`` entry: T fitted on (y, p) and the ECE before and after."""
    temperature = fit_temperature(y_true, prob)
    return {
        "temperature": temperature,
        "ece_before": ece(y_true, prob, n_bins),
        "ece_after": ece(y_true, apply_temperature(prob, temperature), n_bins),
        "n_bins": n_bins,
        "n": int(np.asarray(y_true).size),
    }
