"""Every pair of families' best models compared on the test split, patients first.

The test split has several X-rays per child (746 images from 406 patients in the main
study), so the PRIMARY comparison is :func:`study.select.stats.paired_bootstrap`: accuracy
at each model's own threshold and ROC-AUC, patients resampled, both models scored on the
same resamples; Obuchowski's (1997) analytic clustered AUC test stands beside the
bootstrap's AUC comparison as a cross-check. McNemar and DeLong treat every image as
independent, which makes their p-values too small; they are kept as secondary, labelled
so. Each list is Holm-adjusted over its own tests, and every test gets its verdict.

One function, :func:`compare_families`, serves both summary.json (at the end of a study,
from the models' probabilities) and the report (rebuilt from the saved prediction CSVs,
whose probabilities are rounded to 6 decimals): one computation, same seed.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from study.select import stats

ALPHA = 0.05
N_BOOT = 2000
SEED = 0
SECONDARY = "per-image (assumes independent images; secondary)"


def aligned(da: dict[str, Any], db: dict[str, Any]) -> tuple[Any, ...] | None:
    """(labels, probabilities of A, of B, patient ids) on the images both families saw.

    ``da``/``db`` hold aligned ``file``, ``patient``, ``y`` and ``p``; None when they share
    no image or disagree on a label.
    """
    common = sorted(set(da["file"]) & set(db["file"]))
    ia = {p: i for i, p in enumerate(da["file"])}
    ib = {p: i for i, p in enumerate(db["file"])}
    sel_a = np.array([ia[p] for p in common], int)
    sel_b = np.array([ib[p] for p in common], int)
    y = np.asarray(da["y"])[sel_a]
    if len(common) == 0 or not np.array_equal(y, np.asarray(db["y"])[sel_b]):
        return None
    groups = np.asarray(da["patient"])[sel_a]
    return y, np.asarray(da["p"])[sel_a], np.asarray(db["p"])[sel_b], groups


def _pair(
    a: str, b: str, data: tuple[Any, ...], thr: dict[str, float], problems: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The clustered tests (primary) and McNemar/DeLong (secondary) of one pair."""
    y, pa, pb, groups = data
    primary: list[dict[str, Any]] = []
    secondary: list[dict[str, Any]] = []
    what = {"accuracy": "accuracy at each model's threshold", "auc": "ROC-AUC"}
    for metric in ("accuracy", "auc"):
        try:
            r = stats.paired_bootstrap(
                y, pa, pb, groups, metric, thr[a], thr[b], n_boot=N_BOOT, alpha=ALPHA, seed=SEED
            )
        except ValueError as e:
            problems.append(f"patient bootstrap ({metric}) {a} vs {b}: {e}")
        else:
            primary.append({"a": a, "b": b, "result": r, "what": what[metric], "cross_check": None})
    if primary and primary[-1]["result"]["metric"] == "AUC":
        try:  # the analytic clustered AUC test, shown beside the bootstrap, not Holm-adjusted
            primary[-1]["cross_check"] = stats.obuchowski(y, pa, pb, groups)
        except ValueError as e:
            problems.append(f"Obuchowski {a} vs {b}: {e}")
    mc = stats.mcnemar(y, (pa >= thr[a]).astype(int), (pb >= thr[b]).astype(int))
    secondary.append({"a": a, "b": b, "result": mc, "what": what["accuracy"]})
    try:
        dl = stats.delong(y, pa, pb)
    except ValueError as e:
        problems.append(f"DeLong {a} vs {b}: {e}")
    else:
        secondary.append({"a": a, "b": b, "result": dl, "what": what["auc"]})
    return primary, secondary


def _adjust(tests: list[dict[str, Any]], prefix: str = "") -> None:
    """Holm over the list, then each test's verdict and significance flags, in place."""
    adj = stats.holm([t["result"]["p_value"] for t in tests])
    for t, p_adj in zip(tests, adj, strict=True):
        t["p_holm"] = p_adj
        t["verdict"] = prefix + stats.verdict(t["a"], t["b"], t["result"], alpha=ALPHA)
        t["significant"] = t["result"]["p_value"] < ALPHA
        t["significant_holm"] = p_adj < ALPHA


def compare_families(preds: dict[str, dict[str, Any]], thr: dict[str, float]) -> dict[str, Any]:
    """Both kinds of paired test for every pair of families, each list Holm-adjusted.

    ``preds[family]`` holds aligned ``file``, ``patient``, ``y`` and ``p`` of the test
    split; ``thr[family]`` its validation-chosen threshold. JSON-ready.
    """
    primary: list[dict[str, Any]] = []
    secondary: list[dict[str, Any]] = []
    problems: list[str] = []
    patients: set[Any] = set()
    images: set[Any] = set()
    for a, b in itertools.combinations(list(preds), 2):
        data = aligned(preds[a], preds[b])
        if data is None:
            problems.append(
                f"{a} vs {b}: the test predictions do not cover the same labelled images"
            )
            continue
        patients |= set(data[3].tolist())
        images |= set(preds[a]["file"]) & set(preds[b]["file"])
        pri, sec = _pair(a, b, data, thr, problems)
        primary += pri
        secondary += sec
    _adjust(primary)
    _adjust(secondary, prefix=f"{SECONDARY[0].upper()}{SECONDARY[1:]}: ")
    return {
        "primary": primary,
        "secondary": secondary,
        "problems": problems,
        "n_patients": len(patients),
        "n_images": len(images),
        "n_boot": N_BOOT,
        "alpha": ALPHA,
        "primary_method": "paired patient-level (cluster) percentile bootstrap, the same "
        "patient resamples for both models; Holm-adjusted over the primary tests",
        "secondary_method": f"McNemar (accuracy) and DeLong (ROC-AUC), {SECONDARY}; "
        "Holm-adjusted over the secondary tests",
    }
