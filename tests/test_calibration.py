"""Temperature scaling, ECE, the conformal refer band and the shift-aware threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from study.select import stats
from study.select.calibration import (
    apply_temperature,
    calibration_info,
    ece,
    fit_temperature,
    reliability,
)
from study.select.conformal import ReferBand, conformal_quantile, prediction_sets, refer_band
from study.select.operating_point import choose_threshold_shift
from study.select.stats import threshold_table


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True P(pneumonia) spread over (0, 1) and labels drawn from it."""
    rng = np.random.default_rng(seed)
    p = _sigmoid(rng.normal(0.0, 2.0, n))
    return (rng.random(n) < p).astype(int), p


# --------------------------------------------------------------------------- temperature, ECE


def test_temperature_scaling_undoes_overconfidence() -> None:
    y, p_true = _calibrated(20000, 0)
    reported = _sigmoid(3.0 * _logit(p_true))  # over-confident: logit stretched 3x
    t = fit_temperature(y, reported)
    assert t == pytest.approx(3.0, rel=0.1)
    fixed = apply_temperature(reported, t)
    before, after = ece(y, reported), ece(y, fixed)
    assert before > 0.08 and after < 0.02 and after < before / 4
    assert roc_auc_score(y, fixed) == pytest.approx(roc_auc_score(y, reported), abs=1e-12)
    np.testing.assert_array_equal(
        np.argsort(fixed, kind="stable"), np.argsort(reported, kind="stable")
    )


def test_calibrated_scores_keep_temperature_one() -> None:
    y, p = _calibrated(20000, 1)
    assert fit_temperature(y, p) == pytest.approx(1.0, abs=0.06)
    info = calibration_info(y, p)
    assert info["ece_after"] < 0.02 and info["ece_before"] < 0.02
    json.dumps(info)


def test_saturated_probabilities_stay_finite() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.0, 1e-30, 1.0, 1.0, 0.7, 1.0])
    t = fit_temperature(y, p)
    out = apply_temperature(p, t)
    assert np.isfinite(t) and t > 0 and np.all(np.isfinite(out))
    assert np.all((out >= 0) & (out <= 1))
    with pytest.raises(ValueError):
        apply_temperature(p, 0.0)


def test_ece_by_hand_and_one_implementation() -> None:
    y = np.array([0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.95, 0.95])  # bins of 0.1: one in 0, one in 1, two in 9
    rel = reliability(y, p, n_bins=10)
    assert rel["counts"][0] == 1 and rel["counts"][1] == 1 and rel["counts"][9] == 2
    assert rel["accuracy"][1] == 1.0 and rel["confidence"][9] == pytest.approx(0.95)
    assert rel["accuracy"][4] is None and rel["centres"][0] == pytest.approx(0.05)
    expected = (0.05 * 1 + 0.85 * 1 + 0.05 * 2) / 4
    assert ece(y, p, n_bins=10) == pytest.approx(expected)
    assert stats.calibration(y, p, n_bins=10)["ece"] == pytest.approx(expected)
    assert stats.calibration(y, p, n_bins=10)["count"] == [1, 1, 2]


def test_edge_probability_goes_to_the_lower_bin_like_sklearn() -> None:
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(3)
    p = np.r_[rng.random(500), [0.0, 0.1, 0.2, 0.5, 1.0]]
    y = (rng.random(p.size) < p).astype(int)
    c = stats.calibration(y, p, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    np.testing.assert_allclose(c["prob_true"], prob_true)
    np.testing.assert_allclose(c["prob_pred"], prob_pred)


# --------------------------------------------------------------------------- conformal band


def _noisy_model(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Exchangeable (y, p): a logit 2 * (2y - 1) blurred by Gaussian noise of that scale."""
    y = (rng.random(n) < 0.6).astype(int)
    return y, _sigmoid(2.0 * (2 * y - 1) + noise * rng.normal(size=n))


def _coverage(band: ReferBand, y: np.ndarray, p: np.ndarray) -> float:
    sets = prediction_sets(p, band.q)
    return float(np.mean(sets[np.arange(y.size), y]))


def test_conformal_sets_reach_the_target_coverage() -> None:
    covs = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        band = refer_band(*_noisy_model(500, 2.0, rng), coverage=0.95)
        covs.append(_coverage(band, *_noisy_model(5000, 2.0, rng)))
    assert 0.945 <= np.mean(covs) <= 0.97
    assert min(covs) > 0.92


def test_band_is_the_region_where_both_classes_are_plausible() -> None:
    rng = np.random.default_rng(0)
    band = refer_band(*_noisy_model(1000, 2.0, rng))
    assert band.q >= 0.5 and band.low == pytest.approx(1 - band.q) and band.high == band.q
    grid = np.linspace(0, 1, 1001)
    both = prediction_sets(grid, band.q).all(axis=1)
    np.testing.assert_array_equal(both, band.contains(grid))
    assert band.n_calibration == 1000 and band.coverage_target == 0.95
    assert ReferBand.from_dict(json.loads(json.dumps(band.to_dict()))) == band


def test_separable_model_gets_an_empty_band() -> None:
    y = np.r_[np.zeros(200, int), np.ones(200, int)]
    p = np.r_[np.full(200, 0.02), np.full(200, 0.97)]
    band = refer_band(y, p)
    assert band.empty and band.low is None and band.high is None and band.q < 0.5
    assert not band.contains(np.linspace(0, 1, 11)).any()
    assert ReferBand.from_dict(band.to_dict()).empty


def test_band_widens_when_the_model_is_noisier() -> None:
    rng = np.random.default_rng(5)
    widths = []
    for noise in (1.0, 2.0, 3.0):
        band = refer_band(*_noisy_model(2000, noise, rng))
        widths.append(0.0 if band.empty else band.high - band.low)
    assert widths[0] < widths[1] < widths[2]


def test_quantile_rank_is_exact() -> None:
    scores = np.arange(1, 20) / 20.0  # n = 19: rank ceil(20 * 0.95) = 19, the largest score
    assert conformal_quantile(scores, 0.95) == pytest.approx(0.95)
    assert conformal_quantile(scores, 0.5) == pytest.approx(0.5)  # rank ceil(10) = 10


def test_too_few_calibration_images_refer_everything() -> None:
    band = refer_band([0, 1, 1], [0.1, 0.9, 0.8], coverage=0.95)  # rank ceil(4 * 0.95) = 4 > 3
    assert band.q == 1.0 and (band.low, band.high) == (0.0, 1.0)


# --------------------------------------------------------------------------- shift threshold


def _scores(n: int, rng: np.random.Generator, pos_shift: float, neg_shift: float) -> tuple:
    y = (rng.random(n) < 0.5).astype(int)
    z = np.where(y == 1, 3.0 + pos_shift, -3.0 + neg_shift) + rng.normal(size=n)
    return y, _sigmoid(z)


def _shift(rng: np.random.Generator, n: int, pos_shift: float, neg_shift: float) -> dict:
    return {
        f"cond{k}/{s}": _scores(n, rng, pos_shift * s / 3, neg_shift * s / 3)
        for k in range(3)
        for s in (1, 2, 3)
    }


def _mean_j(sets: dict, t: float) -> float:
    rows = [threshold_table(y, p, [t])[0] for y, p in sets.values()]
    return float(np.mean([r["sensitivity"] + r["specificity"] - 1 for r in rows]))


def test_shift_rule_maximises_mean_youden_within_the_clean_floor() -> None:
    rng = np.random.default_rng(0)
    y_val, p_val = _scores(2000, rng, 0.0, 0.0)
    shift = _shift(rng, 1000, -2.5, -1.0)
    op = choose_threshold_shift(y_val, p_val, shift, 0.95)
    assert op.threshold < op.clean_threshold  # the shifted positives pull it down
    sets = {"clean": (y_val, p_val), **shift}
    grid = [t for t in np.linspace(0.001, 0.999, 400) if t <= op.clean_threshold]
    assert _mean_j(sets, op.threshold) >= max(_mean_j(sets, t) for t in grid) - 1e-9
    clean = threshold_table(y_val, p_val, [op.threshold])[0]
    assert clean["sensitivity"] >= 0.95  # the floor still holds at home
    held_out = _shift(rng, 4000, -2.5, -1.0)  # new images from the same shifted hospitals
    assert _mean_j(held_out, op.threshold) > _mean_j(held_out, op.clean_threshold) + 0.05
    assert "Youden" in op.rule and f"{op.threshold:.4f}" in op.rule
    assert {r["threshold"] for r in op.table} == {op.threshold, op.clean_threshold, 0.5}
    json.dumps(op.table)


def test_shift_rule_never_breaks_the_clean_sensitivity_floor() -> None:
    """A shift that pushes normal lungs' scores up cannot buy specificity beyond the clean
    floor: the threshold stays at or below the clean rule's, and the cost is shown."""
    rng = np.random.default_rng(1)
    y_val, p_val = _scores(2000, rng, 0.0, 0.0)
    op = choose_threshold_shift(y_val, p_val, _shift(rng, 1000, 0.0, 2.0), 0.95)
    row = next(r for r in op.table if r["threshold"] == op.threshold)
    assert op.threshold <= op.clean_threshold
    assert row["clean_sensitivity"] >= 0.95
    assert row["shift_specificity"] < row["clean_specificity"]  # the cost is shown, not hidden


def test_reliability_diagram_is_a_real_png(tmp_path) -> None:
    import cv2

    from study.report.figures import reliability_diagram

    y, p_true = _calibrated(3000, 4)
    reported = _sigmoid(3.0 * _logit(p_true))
    fixed = apply_temperature(reported, fit_temperature(y, reported))
    png = reliability_diagram(reliability(y, reported), reliability(y, fixed))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert img.shape[1] >= 400 and float(np.std(img)) > 5
    (tmp_path / "rel.png").write_bytes(png)
