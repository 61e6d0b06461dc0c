"""Matplotlib figures for the comparison report, returned as PNG bytes.

The report embeds every figure as a data URI so report.html is one file that
opens offline and can be mailed around; nothing here writes to disk. Figures
use the object-oriented ``Figure`` API (no pyplot state), so the report can be
built inside a long-running process (the service, a test) without leaking
figures or needing a display.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from study.select.stats import threshold_table

DPI = 100
JPEG_QUALITY = 85  # thumbnails and overlays: small enough for a 600-image gallery
#: One colour per family, stable across every figure of the report.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def family_colours(families: Sequence[str]) -> dict[str, str]:
    return {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(families)}


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


@dataclass(frozen=True)
class Picture:
    """An inline image and its pixel size.

    The size goes into the <img> tag so the page lays out before the images
    decode; otherwise in-page links (leaderboard -> curves) land in the wrong place.
    """

    uri: str
    width: int
    height: int


def data_uri(data: bytes, mime: str = "image/png", size: tuple[int, int] | None = None) -> Picture:
    """Inline an image so the HTML needs no file beside it; ``size`` is (width, height)."""
    if size is None:
        if data[:8] != b"\x89PNG\r\n\x1a\n":
            raise ValueError("pass size= for images other than PNG")
        size = (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return Picture(uri, int(size[0]), int(size[1]))


def jpeg_picture(img: np.ndarray) -> Picture:
    arr = np.asarray(img)
    return data_uri(jpeg_bytes(arr), "image/jpeg", (arr.shape[1], arr.shape[0]))


def jpeg_bytes(img: np.ndarray) -> bytes:
    """Grey or RGB uint8 -> JPEG; thumbnails as JPEG keep a 600-image gallery a few MB."""
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


# --------------------------------------------------------------------------- training curves


def training_curves(history: Sequence[Mapping[str, float]], title: str, best_epoch: int) -> bytes:
    """Loss and AUC per epoch, train vs val, with the best (kept) epoch marked."""
    fig = Figure(layout="constrained", figsize=(7.5, 2.8))
    axes = fig.subplots(1, 2)
    epochs = [int(h.get("epoch", i)) + 1 for i, h in enumerate(history)]
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "auc", "ROC-AUC")):
        for prefix, name, style in (("", "train", "-o"), ("val_", "val", "-s")):
            vals = [h.get(prefix + key, np.nan) for h in history]
            if np.isfinite(vals).any():
                ax.plot(epochs, vals, style, ms=3, label=name)
        if best_epoch > 0:
            ax.axvline(best_epoch, color="0.5", ls="--", lw=1, label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=10)
        if len(epochs) < 15:
            ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


# --------------------------------------------------------------------------- families


def objective_spread(
    per_family: Mapping[str, Sequence[float]], colours: Mapping[str, str]
) -> bytes:
    """Every trial's objective (exact val AUC) per family: a box with the trials on top."""
    fams = list(per_family)
    fig = Figure(layout="constrained", figsize=(max(4.5, 1.8 * len(fams) + 2), 3.4))
    ax = fig.subplots()
    data = [np.asarray(per_family[f], float) for f in fams]
    ax.boxplot(data, showfliers=False, widths=0.5)
    rng = np.random.default_rng(0)
    for i, (f, vals) in enumerate(zip(fams, data, strict=True), start=1):
        jitter = rng.uniform(-0.12, 0.12, len(vals))
        ax.scatter(i + jitter, vals, s=18, color=colours[f], zorder=3, alpha=0.8)
    labels = [f"{f}\n(n={len(d)})" for f, d in zip(fams, data, strict=True)]
    ax.set_xticks(range(1, len(fams) + 1), labels)
    ax.set_ylabel("exact validation ROC-AUC (objective)")
    ax.set_title("Objective of every trial, per family", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return png_bytes(fig)


def roc_pr_overlay(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    thresholds: Mapping[str, float],
    colours: Mapping[str, str],
) -> bytes:
    """ROC and precision-recall curves of each family's best model on the test split.

    The dot on each curve is that model's operating point (its validation-chosen threshold).
    """
    fig = Figure(layout="constrained", figsize=(10, 4.2))
    ax_roc, ax_pr = fig.subplots(1, 2)
    prevalence = None
    for fam, (y, p) in curves.items():
        c = colours[fam]
        fpr, tpr, _ = roc_curve(y, p)
        ax_roc.plot(fpr, tpr, color=c, label=fam)
        prec, rec, _ = precision_recall_curve(y, p)
        ax_pr.plot(rec, prec, color=c, label=fam)
        pred = p >= thresholds[fam]
        tp = np.sum(pred & (y == 1))
        sens = tp / max(1, np.sum(y == 1))
        fpr_t = np.sum(pred & (y == 0)) / max(1, np.sum(y == 0))
        ax_roc.plot([fpr_t], [sens], "o", color=c, ms=7, mec="k")
        if pred.any():
            ax_pr.plot([sens], [tp / pred.sum()], "o", color=c, ms=7, mec="k")
        prevalence = float(np.mean(y))
    ax_roc.plot([0, 1], [0, 1], ":", color="0.6", label="chance")
    ax_roc.set_xlabel("1 - specificity (false positive rate)")
    ax_roc.set_ylabel("sensitivity (true positive rate)")
    ax_roc.set_title("ROC, test split (dot = operating point)", fontsize=10)
    if prevalence is not None:
        ax_pr.axhline(prevalence, ls=":", color="0.6", label=f"chance ({prevalence:.2f})")
    ax_pr.set_xlabel("recall (sensitivity)")
    ax_pr.set_ylabel("precision")
    ax_pr.set_title("Precision-recall, test split", fontsize=10)
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
    return png_bytes(fig)


def confusion_matrix_fig(conf: Mapping[str, int], title: str) -> bytes:
    """2x2 counts with row percentages (rows = truth), as a clinician reads them."""
    m = np.array([[conf["tn"], conf["fp"]], [conf["fn"], conf["tp"]]], float)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig = Figure(layout="constrained", figsize=(3.4, 3.0))
    ax = fig.subplots()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            colour = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, f"{int(m[i, j])}\n{share[i, j]:.0%}", ha="center", va="center",
                    color=colour, fontsize=10)  # fmt: skip
    ax.set_xticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set_yticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return png_bytes(fig)


def calibration_fig(cal: Mapping[str, Mapping[str, Any]], colours: Mapping[str, str]) -> bytes:
    """Reliability curves (from stats.calibration) of each family's best model, test split."""
    fig = Figure(layout="constrained", figsize=(4.8, 4.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color="0.6", label="perfectly calibrated")
    for fam, c in cal.items():
        label = f"{fam} (Brier {c['brier']:.3f})"
        ax.plot(c["prob_pred"], c["prob_true"], "-o", ms=4, color=colours[fam], label=label)
    ax.set_xlabel("mean predicted probability of pneumonia (bin)")
    ax.set_ylabel("observed share with pneumonia")
    ax.set_title("Calibration, test split (10 equal-width bins)", fontsize=10)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return png_bytes(fig)


def reliability_diagram(before: Mapping[str, Any], after: Mapping[str, Any]) -> bytes:
    """Reliability before and after temperature scaling (from calibration.reliability).

    Top: observed share of pneumonia against mean predicted probability per non-empty bin,
    with each curve's ECE in its legend; bottom: how many images fall in each bin, since a
    large gap in a bin of three images means little.
    """
    fig = Figure(layout="constrained", figsize=(4.8, 5.4))
    ax, hx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ":", color="0.6", label="perfectly calibrated")
    width = 1.0 / before["n_bins"]
    for rel, name, colour, shift in (
        (before, "before", "#d62728", -0.25),
        (after, "after", "#1f77b4", 0.25),
    ):
        full = [i for i, c in enumerate(rel["counts"]) if c > 0]
        conf = [rel["confidence"][i] for i in full]
        acc = [rel["accuracy"][i] for i in full]
        ax.plot(conf, acc, "-o", ms=4, color=colour, label=f"{name} (ECE {rel['ece']:.3f})")
        centres = np.asarray(rel["centres"]) + shift * width
        hx.bar(centres, rel["counts"], width=width / 2, color=colour, label=name)
    ax.set_ylabel("observed share with pneumonia")
    ax.set_title(
        f"Calibration before and after temperature scaling ({before['n_bins']} bins)", fontsize=10
    )
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    hx.set_xlabel("predicted probability of pneumonia")
    hx.set_ylabel("images")
    hx.set_xlim(-0.02, 1.02)
    return png_bytes(fig)


def ci_forest(rows: Sequence[Mapping[str, Any]], colours: Mapping[str, str]) -> bytes:
    """Point estimates with 95% CIs per metric and family: overlap at a glance."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fams = list(dict.fromkeys(r["family"] for r in rows))
    fig = Figure(layout="constrained", figsize=(3.0 * len(metrics), 0.5 * len(fams) + 1.6))
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    for ax, metric in zip(axes, metrics, strict=True):
        for k, fam in enumerate(fams):
            r = next((r for r in rows if r["metric"] == metric and r["family"] == fam), None)
            if r is None or r.get("point") is None:
                continue
            lo, hi = r.get("lo"), r.get("hi")
            if lo is not None and hi is not None:
                ax.plot([lo, hi], [k, k], color=colours[fam], lw=2.5)
            ax.plot([r["point"]], [k], "o", color=colours[fam], mec="k")
        ax.set_title(metric, fontsize=10)
        ax.set_yticks(range(len(fams)), fams)
        ax.set_ylim(-0.6, len(fams) - 0.4)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Test split, 95% patient-level bootstrap CIs", fontsize=10)
    return png_bytes(fig)


def threshold_curve(
    y: np.ndarray, p: np.ndarray, threshold: float, title: str = "validation"
) -> bytes:
    """Sensitivity and specificity as the cut-off moves, with the chosen one marked.

    Needs both classes in ``y`` (the rates come from :func:`study.select.stats.threshold_table`).
    """
    ts = np.linspace(0, 1, 101)
    rows = threshold_table(y, p, ts)
    sens = [r["sensitivity"] for r in rows]
    spec = [r["specificity"] for r in rows]
    fig = Figure(layout="constrained", figsize=(5.0, 3.2))
    ax = fig.subplots()
    ax.plot(ts, sens, label="sensitivity", color=PALETTE[1])
    ax.plot(ts, spec, label="specificity", color=PALETTE[0])
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"chosen {threshold:.3f}")
    ax.set_xlabel("threshold on P(pneumonia)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Trade-off on the {title} split", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig)
