"""Honest statistics for the model comparison and the report.

Everything a claim in the report rests on goes through here, so each number
can be traced to one function:

* :func:`binary_metrics` / :func:`threshold_table`: the usual operating-point
  numbers, as plain JSON-ready floats and ints.
* :func:`choose_threshold`: the decision threshold is fixed on *validation*
  data with a rule stated in words (screening wants high sensitivity), never
  tuned on the test set.
* :func:`bootstrap_ci`: confidence intervals resample *patients*, not images.
  The Kermany set has several X-rays per child; treating them as independent
  makes intervals too narrow.
* :func:`paired_bootstrap`: the primary comparison of two models (accuracy at each
  model's threshold, or AUC). Every model is scored on the same test images, so the
  comparison is paired, and it resamples patients, so a child's several X-rays do not
  count as independent evidence.
* :func:`mcnemar` (paired accuracies) and :func:`delong` (paired AUCs): the classic
  per-image tests. They assume independent images, so with several X-rays per patient
  their p-values are too small; the report shows them only as secondary.
* :func:`obuchowski`: the analytic clustered counterpart of DeLong (Obuchowski 1997), a
  cross-check of the bootstrap's AUC comparison.
* :func:`holm`: adjusted p-values when several pairwise tests are read together.
* :func:`verdict`: one plain-language sentence per test, so the report never
  calls a difference "better" without a p-value beside it.
* :func:`fmt_p`: the one way a p-value is
  written, in the report's sentences, its tables and the progress lines.
* :func:`calibration` (binning and ECE from :mod:`study.select.calibration`) and
  :func:`effect_size`: reliability curve and the error
  analysis (do errors differ from correct cases in intensity, contrast, ...?).

Conventions: label 1 = pneumonia (positive); a case is called positive when
``prob >= threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats as sps
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    roc_auc_score,
    roc_curve,
)

from study.select.calibration import reliability

Metric = Literal["accuracy", "sensitivity", "specificity", "auc"]
THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity")


def _as_labels(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true).ravel()
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 (normal) and 1 (pneumonia)")
    return y.astype(np.int64)


def _as_scores(prob: Any, n: int) -> np.ndarray:
    p = np.asarray(prob, dtype=np.float64).ravel()
    if p.shape[0] != n:
        raise ValueError(f"got {p.shape[0]} scores for {n} labels")
    if not np.isfinite(p).all():
        raise ValueError("scores contain NaN or inf")
    return p


def _ratio(num: float, den: float) -> float | None:
    """None (JSON null) instead of NaN when a rate is undefined, e.g. no positives."""
    return float(num / den) if den > 0 else None


def _counts(y: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """The confusion matrix of 0/1 labels and calls, as named counts."""
    tn, fp, fn, tp = np.bincount(2 * y + pred, minlength=4)
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def _rates(c: dict[str, int]) -> dict[str, float | None]:
    """Operating-point rates from confusion counts; None where a rate is undefined."""
    tn, fp, fn, tp = c["tn"], c["fp"], c["fn"], c["tp"]
    return {
        "accuracy": _ratio(tp + tn, tn + fp + fn + tp),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def binary_metrics(y_true: Any, prob: Any, threshold: float) -> dict[str, Any]:
    """Operating-point and ranking metrics in one JSON-serialisable dict.

    Undefined values (AUC with one class present, precision with no positive
    calls) are ``None`` rather than NaN, because NaN is not valid JSON.
    """
    y = _as_labels(y_true)
    p = _as_scores(prob, y.size)
    c = _counts(y, (p >= threshold).astype(np.int64))
    both = 0 < y.sum() < y.size
    return {
        "threshold": float(threshold),
        "n": int(y.size),
        **_rates(c),
        "auc": float(roc_auc_score(y, p)) if both else None,
        "pr_auc": float(average_precision_score(y, p)) if both else None,
        "confusion": c,
    }


def choose_threshold(y_true: Any, prob: Any, min_sensitivity: float = 0.95) -> tuple[float, str]:
    """Fix the operating point on validation data, by a rule that can be written down.

    Among all cut-offs (every distinct validation score), keep those with
    sensitivity >= ``min_sensitivity`` and take the one with the highest
    specificity; ties go to the higher threshold (fewer false alarms on new
    data for the same validation result). Because specificity can only fall
    as the threshold falls, this is the highest threshold that still meets the
    sensitivity floor.
    """
    y = _as_labels(y_true)
    p = _as_scores(prob, y.size)
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError("choose_threshold needs both classes in the validation data")
    if not 0.0 <= min_sensitivity <= 1.0:
        raise ValueError("min_sensitivity must be in [0, 1]")
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    finite = np.isfinite(thr)  # roc_curve prepends +inf (call nothing positive)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    ok = np.flatnonzero(tpr >= min_sensitivity - 1e-12)
    # tpr reaches 1 at the lowest score, so ok is never empty.
    spec = 1.0 - fpr[ok]
    best = ok[spec == spec.max()]
    i = best[np.argmax(thr[best])]
    t = float(thr[i])
    rule = (
        f"Threshold {t:.4f} was chosen on validation data (n = {y.size}) as the cut-off with "
        f"the highest specificity ({1.0 - fpr[i]:.3f}) among those with sensitivity of at "
        f"least {min_sensitivity:.2f} (achieved {tpr[i]:.3f}); ties go to the higher "
        f"threshold. An X-ray is called pneumonia when its predicted probability is "
        f">= {t:.4f}."
    )
    return t, rule


def threshold_table(y_true: Any, prob: Any, thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """Sensitivity/specificity/precision at several cut-offs, to show the trade-off."""
    y = _as_labels(y_true)
    p = _as_scores(prob, y.size)
    rows = []
    for t in thresholds:
        c = _counts(y, (p >= t).astype(np.int64))
        r = _rates(c)
        rows.append(
            {
                "threshold": float(t),
                "sensitivity": r["sensitivity"],
                "specificity": r["specificity"],
                "precision": r["precision"],
                **c,
            }
        )
    return rows


# --------------------------------------------------------------------------- bootstrap


class BootstrapCI(tuple):
    """``(point, lo, hi)``; unpacks like a 3-tuple but also says how many resamples were skipped.

    Resamples that contain only one class leave AUC (and sensitivity or
    specificity) undefined; they are dropped and counted in ``n_skipped``
    rather than silently biasing the interval.
    """

    point: float
    lo: float
    hi: float

    def __new__(
        cls,
        point: float,
        lo: float,
        hi: float,
        *,
        metric: str,
        n_boot: int,
        n_skipped: int,
        alpha: float,
        n_groups: int,
    ) -> BootstrapCI:
        self = super().__new__(cls, (point, lo, hi))
        self.point, self.lo, self.hi = point, lo, hi
        self.metric, self.n_boot, self.n_skipped = metric, n_boot, n_skipped
        self.alpha, self.n_groups = alpha, n_groups
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "point": self.point,
            "lo": self.lo,
            "hi": self.hi,
            "level": 1.0 - self.alpha,
            "n_boot": self.n_boot,
            "n_skipped": self.n_skipped,
            "n_groups": self.n_groups,
            "method": "patient-level (cluster) percentile bootstrap",
        }


def _metric_from_counts(metric: str, tn: Any, fp: Any, fn: Any, tp: Any) -> Any:
    """Vectorised over bootstrap replicates; NaN where the rate is undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "accuracy":
            return (tp + tn) / (tn + fp + fn + tp)
        if metric == "sensitivity":
            return tp / (tp + fn)
        if metric == "specificity":
            return tn / (tn + fp)
    raise ValueError(f"unknown metric {metric!r}")


def weighted_auc(y_true: Any, score: Any, weights: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of ``weights`` (n_rep, n): the bootstrap's inner loop, vectorised.

    Equals ``roc_auc_score(y, score, sample_weight=w)`` row by row (ties count
    1/2; the tests check it against sklearn), but does all replicates in a few
    array operations instead of thousands of sklearn calls. Rows with no
    positive or no negative weight give NaN.
    """
    y = _as_labels(y_true)
    s = _as_scores(score, y.size)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # one per score level
    w_sorted = w[:, order]
    pos = np.add.reduceat(w_sorted * y[order], starts, axis=1)
    neg = np.add.reduceat(w_sorted * (1 - y[order]), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each level
    num = np.sum(pos * (below + 0.5 * neg), axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _multiplicities(rng: np.random.Generator, n_groups: int, n_rep: int) -> np.ndarray:
    """(n_rep, n_groups): how often each group was drawn in each resample."""
    draws = rng.integers(0, n_groups, (n_rep, n_groups))
    flat = (draws + n_groups * np.arange(n_rep)[:, None]).ravel()
    return np.bincount(flat, minlength=n_rep * n_groups).reshape(n_rep, n_groups)


def bootstrap_ci(
    y_true: Any,
    prob: Any,
    groups: Any,
    metric: Metric,
    threshold: float | None = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile CI that resamples patients (all of a patient's images together).

    Each replicate draws ``n_groups`` group ids with replacement and turns
    them into per-group multiplicities, so a replicate is a weighted sum of
    per-group confusion counts (threshold metrics) or an AUC with those
    multiplicities as sample weights; the resampled image list itself is never
    built. Pass ``groups=np.arange(n)`` for the ordinary image-level bootstrap.
    """
    y = _as_labels(y_true)
    p = _as_scores(prob, y.size)
    g = np.asarray(groups).ravel()
    _check_bootstrap_args(y, g, metric, threshold)
    _, inv = np.unique(g, return_inverse=True)
    n_groups = int(inv.max()) + 1
    point, replicate = _resampled_metric(y, p, inv, n_groups, metric, threshold)
    rng = np.random.default_rng(seed)
    reps = _replicates(replicate, n_groups, n_boot, _chunk(n_groups, y.size, metric, n_boot), rng)
    return _percentile_ci(reps, point, metric, alpha, n_groups)


def _chunk(n_groups: int, n_images: int, metric: str, n_boot: int) -> int:
    """Resamples per chunk: bounds the (chunk, n_groups) and, for AUC, (chunk, n_images)
    matrices to ~8 MB each."""
    return max(1, min(n_boot, 1_000_000 // max(n_groups, n_images if metric == "auc" else 1)))


def _resampled_metric(
    y: np.ndarray, p: np.ndarray, inv: np.ndarray, n_groups: int, metric: str, threshold: Any
) -> tuple[float, Callable[[np.ndarray], np.ndarray]]:
    """The metric on the data as observed, and the function that recomputes it for each row of
    group multiplicities: the one way a resample is scored, for single CIs and paired tests."""
    if metric == "auc":
        if y.sum() in (0, y.size):
            raise ValueError("AUC needs both classes")

        def replicate(mult: np.ndarray) -> np.ndarray:
            return weighted_auc(y, p, mult[:, inv])

        return float(roc_auc_score(y, p)), replicate
    per_group = _group_confusion(y, (p >= threshold).astype(np.int64), inv, n_groups)

    def replicate(mult: np.ndarray) -> np.ndarray:
        return _metric_from_counts(metric, *(mult @ per_group).T)

    return float(_metric_from_counts(metric, *per_group.sum(axis=0))), replicate


def _check_bootstrap_args(y: np.ndarray, g: np.ndarray, metric: str, threshold: Any) -> None:
    if g.shape[0] != y.size:
        raise ValueError(f"got {g.shape[0]} group ids for {y.size} labels")
    if metric not in (*THRESHOLD_METRICS, "auc"):
        raise ValueError(f"unknown metric {metric!r}; use accuracy, sensitivity, specificity, auc")
    if metric != "auc" and threshold is None:
        raise ValueError(f"{metric} needs a threshold (choose it on validation data)")


def _group_confusion(y: np.ndarray, pred: np.ndarray, inv: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group confusion counts, shape ``(n_groups, 4)``: tn, fp, fn, tp."""
    return np.stack(
        [
            np.bincount(inv, weights=(y == 0) & (pred == 0), minlength=n_groups),
            np.bincount(inv, weights=(y == 0) & (pred == 1), minlength=n_groups),
            np.bincount(inv, weights=(y == 1) & (pred == 0), minlength=n_groups),
            np.bincount(inv, weights=(y == 1) & (pred == 1), minlength=n_groups),
        ],
        axis=1,
    )


def _replicates(
    replicate: Callable[[np.ndarray], np.ndarray],
    n_groups: int,
    n_boot: int,
    chunk: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``n_boot`` metric values, ``chunk`` resamples (group multiplicities) at a time."""
    reps = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        mult = _multiplicities(rng, n_groups, min(chunk, n_boot - start))
        reps[start : start + len(mult)] = replicate(mult)
    return reps


def _percentile_ci(
    reps: np.ndarray, point: float, metric: str, alpha: float, n_groups: int
) -> BootstrapCI:
    """Percentile interval over the replicates where the metric is defined."""
    valid = reps[np.isfinite(reps)]
    n_skipped = int(reps.size - valid.size)
    if valid.size == 0:
        raise ValueError(f"every bootstrap resample left {metric} undefined")
    lo, hi = np.percentile(valid, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return BootstrapCI(
        point,
        float(lo),
        float(hi),
        metric=metric,
        n_boot=reps.size,
        n_skipped=n_skipped,
        alpha=alpha,
        n_groups=n_groups,
    )


# --------------------------------------------------------------------------- paired tests


def paired_bootstrap(
    y_true: Any,
    prob_a: Any,
    prob_b: Any,
    groups: Any,
    metric: Metric,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare two models on the same images when images come in patients (the primary test).

    Each resample draws patients with replacement and scores BOTH models on that same
    resample (one multiplicity matrix, as in :func:`bootstrap_ci`), so each replicate
    difference d = A - B keeps the pairing and the correlation of a child's X-rays. The
    interval is the percentile interval of d. The two-sided p-value is
    ``2 * min(P(d <= 0), P(d >= 0))`` over the resamples where the metric is defined, at
    least ``1 / (n + 1)`` (n such resamples, so no p of 0) and at most 1: the smallest
    level at which that percentile interval would exclude 0. Threshold metrics use each
    model's own threshold (``threshold_b`` defaults to ``threshold_a``).
    """
    y = _as_labels(y_true)
    pa, pb = _as_scores(prob_a, y.size), _as_scores(prob_b, y.size)
    g = np.asarray(groups).ravel()
    thr_b = threshold_a if threshold_b is None else threshold_b
    _check_bootstrap_args(y, g, metric, threshold_a)
    _, inv = np.unique(g, return_inverse=True)
    n_groups = int(inv.max()) + 1
    va, rep_a = _resampled_metric(y, pa, inv, n_groups, metric, threshold_a)
    vb, rep_b = _resampled_metric(y, pb, inv, n_groups, metric, thr_b)
    chunk = _chunk(n_groups, 2 * y.size, metric, n_boot)  # two (chunk, n_images) weight matrices
    reps = _replicates(
        lambda mult: rep_a(mult) - rep_b(mult), n_groups, n_boot, chunk, np.random.default_rng(seed)
    )
    d = reps[np.isfinite(reps)]
    if d.size == 0:
        raise ValueError(f"every bootstrap resample left {metric} undefined")
    lo, hi = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    p = 2 * min(np.mean(d <= 0), np.mean(d >= 0))
    return {
        "test": "patient bootstrap",
        "method": "paired patient-level (cluster) percentile bootstrap",
        "metric": "AUC" if metric == "auc" else metric,
        "value_a": va,
        "value_b": vb,
        "diff": va - vb,
        "diff_ci": [float(lo), float(hi)],
        "level": 1.0 - alpha,
        "p_value": float(min(1.0, max(p, 1.0 / (d.size + 1)))),
        "p_rule": "2 * min(P(d <= 0), P(d >= 0)) over the resampled differences d = A - B, "
        "at least 1 / (resamples + 1)",
        "n_boot": int(reps.size),
        "n_skipped": int(reps.size - d.size),
        "n_groups": n_groups,
        "n": int(y.size),
    }


def mcnemar(y_true: Any, pred_a: Any, pred_b: Any) -> dict[str, Any]:
    """Paired test of two classifiers' accuracies on the same images.

    Only discordant images carry information: b = A right and B wrong,
    c = A wrong and B right. Under H0 b ~ Binomial(b + c, 1/2). With fewer than
    25 discordant pairs the chi-square approximation is poor, so the exact
    binomial test is used; otherwise chi-square with continuity correction,
    (|b - c| - 1)^2 / (b + c) on 1 degree of freedom. ``statistic`` is that
    chi-square value, or min(b, c) for the exact test.
    """
    y = _as_labels(y_true)
    a = np.asarray(pred_a).ravel().astype(np.int64)
    bb = np.asarray(pred_b).ravel().astype(np.int64)
    if a.shape != y.shape or bb.shape != y.shape:
        raise ValueError("y_true, pred_a and pred_b must have the same length")
    ok_a, ok_b = a == y, bb == y
    n11 = int(np.sum(ok_a & ok_b))
    b = int(np.sum(ok_a & ~ok_b))
    c = int(np.sum(~ok_a & ok_b))
    n00 = int(np.sum(~ok_a & ~ok_b))
    if b + c == 0:
        method, stat, pval = "exact binomial", 0.0, 1.0
    elif b + c < 25:
        method = "exact binomial"
        stat = float(min(b, c))
        pval = float(sps.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    else:
        method = "chi-square with continuity correction"
        stat = float((abs(b - c) - 1) ** 2 / (b + c))
        pval = float(sps.chi2.sf(stat, df=1))
    return {
        "test": "McNemar",
        "method": method,
        "metric": "accuracy",
        "value_a": float(ok_a.mean()),
        "value_b": float(ok_b.mean()),
        "table": [[n11, b], [c, n00]],  # rows: A right/wrong, cols: B right/wrong
        "b": b,
        "c": c,
        "n": int(y.size),
        "statistic": stat,
        "p_value": min(1.0, pval),
    }


def _placements(scores: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong structural components for each row of ``scores`` (positives first).

    V10[k, i]: share of negatives scored below positive i (ties count 1/2);
    V01[k, j]: share of positives scored above negative j. Midranks make ties
    count 1/2 without an O(m*n) comparison matrix.
    """
    pos, neg = scores[:, :m], scores[:, m:]
    n = neg.shape[1]
    r_all = sps.rankdata(scores, axis=1)
    r_pos = sps.rankdata(pos, axis=1)
    r_neg = sps.rankdata(neg, axis=1)
    v10 = (r_all[:, :m] - r_pos) / n
    v01 = 1.0 - (r_all[:, m:] - r_neg) / m
    auc = v10.mean(axis=1)
    return auc, v10, v01


def delong(y_true: Any, score_a: Any, score_b: Any) -> dict[str, Any]:
    """Paired DeLong (1988) test that two correlated ROC AUCs are equal.

    The AUC is the mean placement value; its covariance matrix is
    S10/m + S01/n, with S10 and S01 the sample covariances (ddof=1) of the
    positives' and negatives' placement values across the two models. The
    difference is referred to a standard normal (two-sided).
    """
    y = _as_labels(y_true)
    sa = _as_scores(score_a, y.size)
    sb = _as_scores(score_b, y.size)
    m, n = int(y.sum()), int(y.size - y.sum())
    if m < 2 or n < 2:
        raise ValueError("DeLong needs at least two positives and two negatives")
    order = np.concatenate([np.flatnonzero(y == 1), np.flatnonzero(y == 0)])
    auc, v10, v01 = _placements(np.stack([sa[order], sb[order]]), m)
    cov = np.cov(v10) / m + np.cov(v01) / n
    return {
        "test": "DeLong",
        "metric": "AUC",
        "auc_a": float(auc[0]),
        "auc_b": float(auc[1]),
        "var_a": float(cov[0, 0]),
        "var_b": float(cov[1, 1]),
        "cov_ab": float(cov[0, 1]),
        **_auc_z_test(auc, cov),
        "n_pos": m,
        "n_neg": n,
    }


def _auc_z_test(auc: np.ndarray, cov: np.ndarray) -> dict[str, Any]:
    """Two correlated AUCs and their 2x2 covariance -> difference, SE, 95% CI, z, p (normal)."""
    diff = float(auc[0] - auc[1])
    se = math.sqrt(max(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), 0.0))
    if se > 0:
        z = diff / se
        pval = float(2 * sps.norm.sf(abs(z)))
    else:  # identical rankings (or both perfect): no evidence of a difference
        z, pval = 0.0, 1.0 if diff == 0 else 0.0
    q = float(sps.norm.ppf(0.975))
    return {
        "value_a": float(auc[0]),
        "value_b": float(auc[1]),
        "diff": diff,
        "se": se,
        "diff_ci95": [diff - q * se, diff + q * se],
        "z": float(z),
        "p_value": pval,
    }


def obuchowski(y_true: Any, score_a: Any, score_b: Any, groups: Any) -> dict[str, Any]:
    """Obuchowski's (1997) test that two correlated AUCs are equal when images come in patients.

    DeLong's placement values summed per patient: V10_i (the patient's positives) and
    V01_i (its negatives), centred by m_i * AUC and n_i * AUC. With M positives, N
    negatives, I patients (I10 with a positive, I01 with a negative):
    S10 = I10 / ((I10 - 1) M) * sum V10 V10', S01 likewise, S11 = I / (I - 1) * sum V10 V01',
    cov = S10 / M + S01 / N + (S11 + S11') / (M N). With one image per patient it is DeLong.
    """
    y = _as_labels(y_true)
    sa, sb = _as_scores(score_a, y.size), _as_scores(score_b, y.size)
    g = np.asarray(groups).ravel()
    if g.shape[0] != y.size:
        raise ValueError(f"got {g.shape[0]} group ids for {y.size} labels")
    _, inv = np.unique(g, return_inverse=True)
    n_groups = int(inv.max()) + 1 if y.size else 0
    gp, gn = inv[y == 1], inv[y == 0]
    m_i, n_i = np.bincount(gp, minlength=n_groups), np.bincount(gn, minlength=n_groups)
    i10, i01 = int(np.sum(m_i > 0)), int(np.sum(n_i > 0))
    if min(i10, i01) < 2:
        raise ValueError("Obuchowski needs positives and negatives from at least two patients each")
    m, n = gp.size, gn.size
    order = np.concatenate([np.flatnonzero(y == 1), np.flatnonzero(y == 0)])
    auc, v10, v01 = _placements(np.stack([sa[order], sb[order]]), m)
    c10 = np.stack([np.bincount(gp, weights=v, minlength=n_groups) for v in v10])
    c01 = np.stack([np.bincount(gn, weights=v, minlength=n_groups) for v in v01])
    c10 -= m_i * auc[:, None]
    c01 -= n_i * auc[:, None]
    s10 = i10 / ((i10 - 1) * m) * (c10 @ c10.T)
    s01 = i01 / ((i01 - 1) * n) * (c01 @ c01.T)
    s11 = n_groups / (n_groups - 1) * (c10 @ c01.T)
    cov = s10 / m + s01 / n + (s11 + s11.T) / (m * n)
    return {
        "test": "Obuchowski",
        "metric": "AUC",
        **_auc_z_test(auc, cov),
        "n_groups": n_groups,
        "n_pos": m,
        "n_neg": n,
    }


# ----------------------------------------------------------------- multiple tests, formatting


def holm(pvals: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values: several pairwise tests, one family-wise error rate."""
    m = len(pvals)
    order = sorted(range(m), key=lambda i: pvals[i])
    adj = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvals[i]))
        adj[i] = running
    return adj


def fmt_p(p: float | None, *, prefix: bool = True) -> str:
    """A p-value as every sentence and table of the report writes it.

    "p < 0.001" below 0.001, three decimals below 0.01, else two; ``prefix=False`` drops
    the "p" for table cells headed "p". None or NaN reads "-".
    """
    if p is None or not math.isfinite(p):
        return "-"
    text = "< 0.001" if p < 0.001 else f"= {p:.3f}" if p < 0.01 else f"= {p:.2f}"
    return f"p {text}" if prefix else text.removeprefix("= ")


def verdict(name_a: str, name_b: str, test_result: dict[str, Any], alpha: float = 0.05) -> str:
    """One sentence for the report, so no difference is called 'better' without its p-value."""
    metric = test_result.get("metric", "performance")
    va, vb = test_result.get("value_a"), test_result.get("value_b")
    p = float(test_result["p_value"])
    test = test_result.get("test", "test")
    if test == "McNemar":
        test = f"McNemar {test_result['method'].split(' with')[0]}"
        detail = f"; {test_result['b']} vs {test_result['c']} discordant images"
    elif "n_groups" in test_result:
        detail = f"; {test_result['n_groups']} patients resampled"
    else:
        detail = ""
    stat = f"({test} {fmt_p(p)}{detail})"
    values = f" ({va:.3f} vs {vb:.3f})" if va is not None and vb is not None else ""
    if p < alpha and va is not None and vb is not None and va != vb:
        hi_name, lo_name = (name_a, name_b) if va > vb else (name_b, name_a)
        hv, lv = max(va, vb), min(va, vb)
        return (
            f"{hi_name} has a significantly higher {metric} than {lo_name} "
            f"({hv:.3f} vs {lv:.3f}) at the {alpha:g} level {stat}."
        )
    return (
        f"The difference in {metric} between {name_a} and {name_b}{values} is not "
        f"statistically significant at the {alpha:g} level {stat}."
    )


# --------------------------------------------------------------------------- calibration, errors


def calibration(y_true: Any, prob: Any, n_bins: int = 10) -> dict[str, Any]:
    """Reliability curve + Brier score: does 'P = 0.8' mean 80 % pneumonia?

    Uniform bins from :func:`study.select.calibration.reliability` (the one binning and
    ECE of the project); empty bins are dropped, as sklearn's ``calibration_curve`` does.
    """
    y = _as_labels(y_true)
    p = _as_scores(prob, y.size)
    rel = reliability(y, p, n_bins)
    full = [i for i, c in enumerate(rel["counts"]) if c > 0]
    return {
        "n_bins": n_bins,
        "prob_pred": [rel["confidence"][i] for i in full],
        "prob_true": [rel["accuracy"][i] for i in full],
        "brier": float(brier_score_loss(y, p)),
        "count": [rel["counts"][i] for i in full],
        "ece": rel["ece"],
    }


def effect_size(a: Any, b: Any) -> dict[str, Any]:
    """How different two groups are (e.g. contrast of misclassified vs correct X-rays).

    Cohen's d (pooled SD) says how large the shift is; the Mann-Whitney U test
    (two-sided, no normality assumption) says whether it could be chance. The
    rank-biserial correlation is U's own effect size: P(a > b) - P(a < b).
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    z = np.asarray(b, dtype=np.float64).ravel()
    if x.size < 2 or z.size < 2:
        raise ValueError("effect_size needs at least two values in each group")
    n1, n2 = x.size, z.size
    pooled = math.sqrt(((n1 - 1) * x.var(ddof=1) + (n2 - 1) * z.var(ddof=1)) / (n1 + n2 - 2))
    diff = float(x.mean() - z.mean())
    d = diff / pooled if pooled > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    u = sps.mannwhitneyu(x, z, alternative="two-sided")
    return {
        "n_a": int(n1),
        "n_b": int(n2),
        "mean_a": float(x.mean()),
        "mean_b": float(z.mean()),
        "median_a": float(np.median(x)),
        "median_b": float(np.median(z)),
        "cohens_d": float(d),
        "mannwhitney_u": float(u.statistic),
        "p_value": float(u.pvalue),
        "rank_biserial": float(2 * u.statistic / (n1 * n2) - 1),
    }
