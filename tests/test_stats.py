"""study.select.stats against hand computations, brute force and simulations with known truth."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from study.fmt import fmt_duration
from study.select import stats


def _paired_predictions(n11: int, b: int, c: int, n00: int) -> tuple[np.ndarray, ...]:
    """Labels and two prediction vectors realising a given McNemar table."""
    y = np.ones(n11 + b + c + n00, dtype=int)
    ok_a = np.r_[np.ones(n11 + b), np.zeros(c + n00)].astype(bool)
    ok_b = np.r_[np.ones(n11), np.zeros(b), np.ones(c), np.zeros(n00)].astype(bool)
    return y, np.where(ok_a, y, 1 - y), np.where(ok_b, y, 1 - y)


# --------------------------------------------------------------------------- metrics, threshold


def test_binary_metrics_hand_example_and_json() -> None:
    y = [1, 1, 1, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.05]
    m = stats.binary_metrics(y, p, 0.5)
    # Called positive: 0.9, 0.6 (true), 0.7 (false) -> tp=2 fn=1 fp=1 tn=3.
    assert m["confusion"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 2}
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # AUC: of 12 pos/neg pairs, the ranking is wrong for (0.6, 0.7), (0.2, 0.7), (0.2, 0.3).
    assert m["auc"] == pytest.approx(9 / 12)
    json.dumps(m)  # plain floats/ints only
    assert stats.binary_metrics([1, 1], [0.2, 0.9], 0.5)["auc"] is None


def test_threshold_rule_meets_sensitivity_and_maximises_specificity() -> None:
    rng = np.random.default_rng(1)
    for trial in range(20):
        n = int(rng.integers(40, 300))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        # Rounded scores create ties, so the tie-break is exercised.
        p = np.round(np.clip(0.35 * y + rng.normal(0.4, 0.2, n), 0, 1), 2)
        t, rule = stats.choose_threshold(y, p, min_sensitivity=0.95)
        assert "0.95" in rule and f"{t:.4f}" in rule
        sens = np.mean(p[y == 1] >= t)
        assert sens >= 0.95, trial
        # Brute force over every distinct score as a cut-off.
        feasible = [
            (np.mean(p[y == 0] < c), c) for c in np.unique(p) if np.mean(p[y == 1] >= c) >= 0.95
        ]
        best_spec = max(s for s, _ in feasible)
        assert np.mean(p[y == 0] < t) == pytest.approx(best_spec)
        assert t == max(c for s, c in feasible if s == best_spec)  # ties -> higher threshold


def test_threshold_table_rows() -> None:
    y = [1, 1, 1, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.05]
    rows = stats.threshold_table(y, p, [0.1, 0.5, 0.95])
    assert [r["sensitivity"] for r in rows] == pytest.approx([1.0, 2 / 3, 0.0])
    # At 0.1 the negatives 0.7, 0.3 and 0.1 (>= is positive) are false alarms: spec = 1/4.
    assert [r["specificity"] for r in rows] == pytest.approx([0.25, 0.75, 1.0])
    assert rows[2]["precision"] is None  # nothing called positive
    json.dumps(rows)


# --------------------------------------------------------------------------- McNemar


def test_mcnemar_chi_square_hand_table() -> None:
    # b = 30 (A right, B wrong), c = 12: b + c = 42 >= 25 -> chi-square with continuity.
    # chi2 = (|30 - 12| - 1)^2 / 42 = 289 / 42 = 6.8810;
    # p = P(chi2_1 > 6.8810) = 2 * (1 - Phi(sqrt(6.8810) = 2.6232)) = 2 * 0.004355 = 0.00871.
    y, a, b = _paired_predictions(n11=50, b=30, c=12, n00=8)
    r = stats.mcnemar(y, a, b)
    assert (r["b"], r["c"]) == (30, 12)
    assert r["table"] == [[50, 30], [12, 8]]
    assert r["method"] == "chi-square with continuity correction"
    assert r["statistic"] == pytest.approx(289 / 42)
    assert r["p_value"] == pytest.approx(0.00871, abs=2e-5)
    assert r["value_a"] == pytest.approx(0.80) and r["value_b"] == pytest.approx(0.62)


def test_mcnemar_exact_hand_table() -> None:
    # b = 1, c = 7: b + c = 8 < 25 -> exact. Under H0 b ~ Bin(8, 1/2):
    # P(X <= 1) = (C(8,0) + C(8,1)) / 2^8 = 9 / 256; two-sided p = 18 / 256 = 0.0703125.
    y, a, b = _paired_predictions(n11=40, b=1, c=7, n00=2)
    r = stats.mcnemar(y, a, b)
    assert r["method"] == "exact binomial"
    assert r["p_value"] == pytest.approx(18 / 256, rel=1e-9)
    assert stats.mcnemar(*_paired_predictions(10, 0, 0, 3))["p_value"] == 1.0


# --------------------------------------------------------------------------- bootstrap


def _sens_data(rng: np.random.Generator, n_patients: int, correlated: bool, sens: float = 0.8):
    """All images positive; each patient has 1-5 images; P(image detected) = sens.

    correlated=True: a patient's images are all detected or all missed (one coin
    per patient), so the image-level sensitivity is still `sens` in expectation
    but the effective sample size is the number of patients.
    """
    sizes = rng.integers(1, 6, n_patients)
    groups = np.repeat(np.arange(n_patients), sizes)
    if correlated:
        hit = np.repeat(rng.random(n_patients) < sens, sizes)
    else:
        hit = rng.random(groups.size) < sens
    y = np.ones(groups.size, dtype=int)
    return y, hit.astype(float), groups  # prob 1.0 if detected, 0.0 if missed


def test_bootstrap_covers_known_sensitivity_and_widens_with_correlation() -> None:
    rng = np.random.default_rng(7)
    covered = {"indep": 0, "corr_cluster": 0, "corr_naive": 0}
    ratio = {"indep": [], "corr": []}
    n_sims = 60
    for i in range(n_sims):
        for kind in ("indep", "corr"):
            y, p, g = _sens_data(rng, 120, correlated=kind == "corr")
            cl = stats.bootstrap_ci(y, p, g, "sensitivity", threshold=0.5, n_boot=800, seed=i)
            nv = stats.bootstrap_ci(
                y, p, np.arange(y.size), "sensitivity", threshold=0.5, n_boot=800, seed=i
            )
            assert cl.point == pytest.approx(p.mean())
            ratio[kind].append((cl.hi - cl.lo) / (nv.hi - nv.lo))
            if kind == "indep":
                covered["indep"] += cl.lo <= 0.8 <= cl.hi
            else:
                covered["corr_cluster"] += cl.lo <= 0.8 <= cl.hi
                covered["corr_naive"] += nv.lo <= 0.8 <= nv.hi
    # Nominal 95 %; with 60 simulations allow for Monte Carlo error.
    assert covered["indep"] / n_sims >= 0.85
    assert covered["corr_cluster"] / n_sims >= 0.85
    # Ignoring patients under-covers when images of a patient agree.
    assert covered["corr_naive"] < covered["corr_cluster"]
    # Same width when images are independent; ~sqrt(mean images per patient) wider otherwise.
    assert 0.85 < np.median(ratio["indep"]) < 1.15
    assert np.median(ratio["corr"]) > 1.4


def test_bootstrap_auc_skips_one_class_resamples() -> None:
    # Three patients: only patient 0 has positives, so ~(2/3)^3 = 30 % of resamples lack them.
    y = np.array([1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.5, 0.2, 0.3, 0.1])
    g = np.array([0, 0, 1, 1, 2, 2])
    ci = stats.bootstrap_ci(y, p, g, "auc", n_boot=500, seed=3)
    point, lo, hi = ci  # unpacks like a plain tuple
    assert point == pytest.approx(roc_auc_score(y, p))
    assert lo <= point <= hi
    assert 0.2 * 500 < ci.n_skipped < 0.45 * 500
    assert ci.to_dict()["n_skipped"] == ci.n_skipped
    with pytest.raises(ValueError, match="threshold"):
        stats.bootstrap_ci(y, p, g, "accuracy")


def test_bootstrap_auc_matches_image_level_when_groups_are_singletons() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 150)
    p = y * 0.5 + rng.random(150)
    point, lo, hi = stats.bootstrap_ci(y, p, np.arange(150), "auc", n_boot=300, seed=1)
    assert lo < point < hi and hi - lo < 0.25


def test_weighted_auc_equals_sklearn_with_sample_weights() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 90)
    s = np.round(y * 0.4 + rng.random(90), 1)  # many ties
    w = rng.integers(0, 4, (25, 90)).astype(float)
    w[0] = 0.0
    w[0, y == 1] = 1.0  # a replicate without negatives -> NaN (skipped by bootstrap_ci)
    got = stats.weighted_auc(y, s, w)
    assert np.isnan(got[0])
    want = [roc_auc_score(y, s, sample_weight=row) for row in w[1:]]
    np.testing.assert_allclose(got[1:], want, rtol=1e-12)


# --------------------------------------------------------------------------- DeLong


def _delong_brute_force(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DeLong's covariance from the definition: explicit psi kernel over every pos/neg pair."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)

    def psi(x: float, z: float) -> float:
        return 1.0 if x > z else 0.5 if x == z else 0.0

    v10 = [[sum(psi(s[i], s[j]) for j in neg) / n for i in pos] for s in (a, b)]
    v01 = [[sum(psi(s[i], s[j]) for i in pos) / m for j in neg] for s in (a, b)]
    return np.cov(v10) / m + np.cov(v01) / n


def test_delong_tiny_example_by_hand() -> None:
    # Positives p1, p2; negatives n1, n2, n3 (B has a tie: p2 = n1 = 0.3).
    y = np.array([1, 1, 0, 0, 0])
    a = np.array([0.8, 0.4, 0.6, 0.2, 0.1])
    b = np.array([0.7, 0.3, 0.3, 0.5, 0.0])
    # Placement values (share of the other class ranked the wrong side; ties 1/2):
    #   A: V10 = [1, 2/3],   V01 = [1/2, 1, 1]      -> AUC_A = 5/6
    #   B: V10 = [1, 1/2],   V01 = [3/4, 1/2, 1]    -> AUC_B = 3/4
    # Var(AUC_A) = var(V10_A)/2 + var(V01_A)/3 = (1/18)/2 + (1/12)/3 = 1/18
    # Var(AUC_B) = (1/8)/2 + (1/16)/3 = 1/12
    # Cov = cov(V10_A, V10_B)/2 + cov(V01_A, V01_B)/3 = (1/12)/2 + 0/3 = 1/24
    # Var(diff) = 1/18 + 1/12 - 2/24 = 1/18; z = (1/12) / sqrt(1/18) = 0.35355; p = 0.7237
    r = stats.delong(y, a, b)
    assert r["auc_a"] == pytest.approx(5 / 6) and r["auc_b"] == pytest.approx(3 / 4)
    assert r["var_a"] == pytest.approx(1 / 18)
    assert r["var_b"] == pytest.approx(1 / 12)
    assert r["cov_ab"] == pytest.approx(1 / 24)
    assert r["se"] == pytest.approx(math.sqrt(1 / 18))
    assert r["z"] == pytest.approx(math.sqrt(18) / 12)
    assert r["p_value"] == pytest.approx(0.7237, abs=1e-4)


def test_delong_matches_sklearn_and_brute_force() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 160)
    latent = rng.normal(size=160)
    a = np.round(y * 1.0 + latent + rng.normal(0, 0.7, 160), 1)  # rounding -> ties
    b = np.round(y * 0.7 + latent + rng.normal(0, 0.9, 160), 1)
    r = stats.delong(y, a, b)
    assert r["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert r["auc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    cov = _delong_brute_force(y, a, b)
    assert r["var_a"] == pytest.approx(cov[0, 0], rel=1e-10)
    assert r["var_b"] == pytest.approx(cov[1, 1], rel=1e-10)
    assert r["cov_ab"] == pytest.approx(cov[0, 1], rel=1e-10)


def test_delong_se_matches_monte_carlo_and_null_size() -> None:
    """The SE should equal the real spread of AUC_A - AUC_B; under H0 p < 0.05 ~5 % of the time."""
    rng = np.random.default_rng(11)
    diffs, ses, pvals = [], [], []
    for _ in range(300):
        y = np.r_[np.ones(80, int), np.zeros(120, int)]
        shared = rng.normal(size=200)  # correlated scores, as for two CNNs on one test set
        a = 0.9 * y + shared + rng.normal(0, 0.8, 200)
        b = 0.9 * y + shared + rng.normal(0, 0.8, 200)  # same true AUC as a
        r = stats.delong(y, a, b)
        diffs.append(r["diff"])
        ses.append(r["se"])
        pvals.append(r["p_value"])
    assert np.mean(ses) == pytest.approx(np.std(diffs, ddof=1), rel=0.15)
    assert 0.01 <= np.mean(np.array(pvals) < 0.05) <= 0.10


def test_delong_single_auc_variance_close_to_hanley_mcneil() -> None:
    # Hanley & McNeil (1982) approximate Var(AUC) from AUC alone (exponential scores):
    # (A(1-A) + (m-1)(Q1-A^2) + (n-1)(Q2-A^2)) / (m n), Q1 = A/(2-A), Q2 = 2A^2/(1+A).
    # Exponential score distributions make their formula exact in expectation.
    rng = np.random.default_rng(5)
    m = n = 400
    y = np.r_[np.ones(m, int), np.zeros(n, int)]
    s = np.r_[rng.exponential(3.0, m), rng.exponential(1.0, n)]
    r = stats.delong(y, s, rng.random(m + n))
    auc = r["auc_a"]
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    hm = (auc * (1 - auc) + (m - 1) * (q1 - auc**2) + (n - 1) * (q2 - auc**2)) / (m * n)
    assert r["var_a"] == pytest.approx(hm, rel=0.2)


# --------------------------------------------------------------------------- patient-clustered


def _few_patients_many_images() -> tuple[np.ndarray, ...]:
    """12 patients (6 with pneumonia), 30 near-identical X-rays each; B fails two patients.

    Model B equals A except that it calls one pneumonia patient normal and one normal
    patient pneumonia (all 30 images of each): 60 discordant images, but only 2 patients.
    """
    rng = np.random.default_rng(0)
    n_pat, k = 12, 30
    y = np.repeat(np.r_[np.ones(6), np.zeros(6)].astype(int), k)
    groups = np.repeat(np.arange(n_pat), k)
    base = np.r_[np.linspace(0.6, 0.9, 6), np.linspace(0.1, 0.4, 6)]
    bad = base.copy()
    bad[0], bad[6] = 0.05, 0.95
    pa = np.repeat(base, k) + rng.normal(0, 0.005, y.size)
    pb = np.repeat(bad, k) + rng.normal(0, 0.005, y.size)
    return y, pa, pb, groups


def test_clustering_changes_the_verdict_when_a_win_rests_on_two_patients() -> None:
    y, pa, pb, groups = _few_patients_many_images()
    mc = stats.mcnemar(y, (pa >= 0.5).astype(int), (pb >= 0.5).astype(int))
    dl = stats.delong(y, pa, pb)
    assert mc["b"] == 60 and mc["c"] == 0
    assert mc["p_value"] < 0.05 and dl["p_value"] < 0.05  # per-image: "significant"
    for metric in ("accuracy", "auc"):
        cl = stats.paired_bootstrap(y, pa, pb, groups, metric, 0.5, 0.5, n_boot=2000, seed=1)
        # P(neither failed patient drawn) ~ (10/12)^12, and then d = 0 -> p ~ 0.2.
        assert cl["p_value"] > 0.05, metric
        assert cl["diff_ci"][0] <= 0 < cl["diff"] <= cl["diff_ci"][1]
        assert cl["n_groups"] == 12 and cl["n"] == y.size
        assert "not statistically significant" in stats.verdict("A", "B", cl)
        assert "12 patients resampled" in stats.verdict("A", "B", cl)
        # The same bootstrap with every image its own "patient" is fooled like McNemar.
        naive = stats.paired_bootstrap(y, pa, pb, np.arange(y.size), metric, 0.5, n_boot=2000)
        assert naive["p_value"] < 0.01, metric
    assert stats.obuchowski(y, pa, pb, groups)["p_value"] > 0.05


def _one_image_per_patient(seed: int, shift: float, n: int = 200) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    return y, y + rng.normal(0, 1, n), y * (1.0 - shift) + rng.normal(0, 1, n)


@pytest.mark.parametrize(
    "seed,shift,significant",
    [(10, 0.0, False), (13, 0.0, False), (12, 0.6, True), (14, 0.6, True), (20, 1.0, True)],
)
def test_clustered_bootstrap_agrees_with_delong_for_singleton_patients(
    seed: int, shift: float, significant: bool
) -> None:
    y, sa, sb = _one_image_per_patient(seed, shift)
    dl = stats.delong(y, sa, sb)
    bt = stats.paired_bootstrap(y, sa, sb, np.arange(y.size), "auc", n_boot=4000, seed=seed)
    assert bt["diff"] == pytest.approx(dl["diff"])
    assert (dl["p_value"] < 0.05) == (bt["p_value"] < 0.05) == significant
    if dl["p_value"] > 1e-3:  # the bootstrap cannot resolve p below ~1/n_boot
        assert 1 / 3 < bt["p_value"] / dl["p_value"] < 3
    else:
        assert bt["p_value"] < 0.01


def test_obuchowski_is_delong_for_singleton_patients() -> None:
    y, sa, sb = _one_image_per_patient(3, 0.4, n=150)
    ob, dl = stats.obuchowski(y, sa, sb, np.arange(150)), stats.delong(y, sa, sb)
    for key in ("value_a", "value_b", "diff", "se", "z", "p_value"):
        assert ob[key] == pytest.approx(dl[key], rel=1e-9), key
    assert ob["n_groups"] == 150
    with pytest.raises(ValueError, match="two patients"):
        stats.obuchowski(y, sa, sb, y)  # one "patient" per class


def test_obuchowski_se_matches_monte_carlo_with_correlated_images() -> None:
    """Patients with 1-5 images sharing a random effect: Obuchowski's SE of the AUC
    difference matches its spread over simulations; DeLong's (per-image) is too small."""
    rng = np.random.default_rng(11)
    diffs, se_ob, se_dl = [], [], []
    for _ in range(200):
        k = rng.integers(1, 6, 60)
        y = np.repeat((rng.random(60) < 0.5).astype(int), k)
        g = np.repeat(np.arange(60), k)
        u = np.repeat(rng.normal(0, 1, 60), k)
        a = y + u + rng.normal(0, 0.5, y.size)
        b = y + u + rng.normal(0, 0.5, y.size) + 0.5 * np.repeat(rng.normal(0, 1, 60), k)
        ob = stats.obuchowski(y, a, b, g)
        diffs.append(ob["diff"])
        se_ob.append(ob["se"])
        se_dl.append(stats.delong(y, a, b)["se"])
    mc = np.std(diffs)
    assert 0.85 < np.sqrt(np.mean(np.square(se_ob))) / mc < 1.15
    assert np.sqrt(np.mean(np.square(se_dl))) / mc < 0.85


def test_paired_bootstrap_uses_the_same_resamples_for_both_models() -> None:
    y, pa, pb, groups = _few_patients_many_images()
    for metric in ("accuracy", "sensitivity", "auc"):
        same = stats.paired_bootstrap(y, pa, pa, groups, metric, 0.5, n_boot=500, seed=4)
        assert same["diff"] == 0.0 and same["diff_ci"] == [0.0, 0.0], metric
        assert same["p_value"] == 1.0
    # Each model's value is what bootstrap_ci and binary_metrics report for it.
    r = stats.paired_bootstrap(y, pa, pb, groups, "accuracy", 0.5, 0.3, n_boot=200)
    assert r["value_a"] == stats.bootstrap_ci(y, pa, groups, "accuracy", 0.5, n_boot=10).point
    assert r["value_b"] == pytest.approx(stats.binary_metrics(y, pb, 0.3)["accuracy"])
    json.dumps(r)


def test_paired_bootstrap_is_deterministic_given_the_seed() -> None:
    y, sa, sb = _one_image_per_patient(12, 0.6, n=150)
    groups = np.arange(150) // 3
    run = [stats.paired_bootstrap(y, sa, sb, groups, "auc", n_boot=700, seed=s) for s in (5, 5, 6)]
    assert run[0] == run[1]
    assert run[0]["diff_ci"] != run[2]["diff_ci"]
    assert run[0]["n_boot"] == 700 and run[0]["n_groups"] == 50


# ------------------------------------------------------------- verdict, calibration, effect size


def test_verdict_sentences() -> None:
    ns = {"test": "DeLong", "metric": "AUC", "value_a": 0.95, "value_b": 0.93, "p_value": 0.21}
    text = stats.verdict("ResNet50", "DenseNet121", ns)
    assert text == (
        "The difference in AUC between ResNet50 and DenseNet121 (0.950 vs 0.930) is not "
        "statistically significant at the 0.05 level (DeLong p = 0.21)."
    )
    sig = dict(ns, value_a=0.90, value_b=0.96, p_value=0.0004)
    text = stats.verdict("ResNet50", "DenseNet121", sig)
    assert text.startswith("DenseNet121 has a significantly higher AUC than ResNet50 (0.960 vs")
    assert "p < 0.001" in text
    y, a, b = _paired_predictions(n11=40, b=1, c=7, n00=2)
    text = stats.verdict("A", "B", stats.mcnemar(y, a, b))
    assert "not statistically significant" in text and "McNemar exact binomial p = 0.07" in text


def test_calibration_of_calibrated_scores() -> None:
    rng = np.random.default_rng(2)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    c = stats.calibration(y, p, n_bins=10)
    assert np.max(np.abs(np.array(c["prob_true"]) - np.array(c["prob_pred"]))) < 0.04
    assert c["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert sum(c["count"]) == 20000 and c["ece"] < 0.02
    json.dumps(c)


def test_effect_size_hand_and_known_shift() -> None:
    # a: mean 2, var 1; b: mean 0, var 1 -> pooled SD 1, d = 2.
    r = stats.effect_size([1, 2, 3], [-1, 0, 1])
    assert r["cohens_d"] == pytest.approx(2.0)
    rng = np.random.default_rng(4)
    r = stats.effect_size(rng.normal(0.5, 1, 2000), rng.normal(0, 1, 2000))
    assert r["cohens_d"] == pytest.approx(0.5, abs=0.08)
    assert r["p_value"] < 1e-10 and r["rank_biserial"] > 0


def test_one_p_value_and_duration_format() -> None:
    assert [stats.fmt_p(p) for p in (0.0004, 0.0071, 0.214)] == [
        "p < 0.001",
        "p = 0.007",
        "p = 0.21",
    ]
    assert stats.fmt_p(0.0004, prefix=False) == "< 0.001"
    assert stats.fmt_p(0.214, prefix=False) == "0.21"
    assert stats.fmt_p(None) == stats.fmt_p(float("nan")) == "-"
    assert [fmt_duration(s) for s in (7.9, 247, 3900, None)] == [
        "0m07s",
        "4m07s",
        "1h05m",
        "-",
    ]
