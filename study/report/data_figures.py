"""Data figures for the report: samples, class balance, intensity/size, preprocessing.

Why: the report must *show* the data (what a healthy and a pneumonia X-ray look
like, how unbalanced the classes are, whether the classes differ in exposure or
size, which a model could exploit as a shortcut) and what preprocessing does.
Figures are drawn with the object-oriented Matplotlib API on the Agg canvas
(no pyplot global state, no display needed) and saved as PNG; every function
returns the path it wrote.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from study.data.audit import AuditReport
from study.data.corruptions import SEVERITIES, Corruption, corrupt
from study.data.preprocess import PreprocessConfig, decode, steps, windowed
from study.data.preview import grey_preview
from study.data.records import CLASS_NAMES, SPLITS, ImageRecord, SplitPlan
from study.data.shift import condition_rng

COLOURS = {"NORMAL": "#1f77b4", "PNEUMONIA": "#d62728"}
DPI = 110
SAMPLES_PER_CLASS = 6
SAMPLE_SEED = 0  # the same X-rays in every rebuilt report


def _save(fig: Figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def _gray_for_display(path: str) -> np.ndarray | None:
    """The X-ray as the reviewer page shows it (grey, windowed), or None when unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return grey_preview(data)


def sample_grid(records: Sequence[ImageRecord], out: Path) -> Path:
    """Healthy lungs (top row) beside pneumonia (bottom row), a seeded random choice."""
    per_class = SAMPLES_PER_CLASS
    rng = random.Random(SAMPLE_SEED)
    fig = Figure(layout="constrained", figsize=(2.2 * per_class, 5.2))
    axes = fig.subplots(len(CLASS_NAMES), per_class, squeeze=False)
    for row, (label, cls) in enumerate(enumerate(CLASS_NAMES)):
        pool = [r for r in records if r.label == label]
        rng.shuffle(pool)
        shown = 0
        for rec in pool:
            if shown == per_class:
                break
            img = _gray_for_display(rec.path)
            if img is None:
                continue
            ax = axes[row, shown]
            ax.imshow(img, cmap="gray")
            ax.set_title(f"{cls}\n{rec.subtype}, {rec.patient}", fontsize=8)
            shown += 1
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
            if not ax.images:
                ax.set_axis_off()
    fig.suptitle(
        f"Random training X-rays (seed {SAMPLE_SEED}): NORMAL (top) vs PNEUMONIA (bottom)",
        fontsize=11,
    )
    return _save(fig, out)


def class_balance(plan: SplitPlan, out: Path) -> Path:
    """Images per split and class, with counts on the bars."""
    sizes = plan.sizes()
    splits = [s for s in SPLITS if sizes[s]["total"]]
    x = np.arange(len(splits))
    width = 0.38
    fig = Figure(layout="constrained", figsize=(6.5, 4))
    ax = fig.subplots()
    for k, cls in enumerate(CLASS_NAMES):
        vals = [sizes[s][cls] for s in splits]
        bars = ax.bar(x + (k - 0.5) * width, vals, width, label=cls, color=COLOURS[cls])
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, [f"{s}\n(n={sizes[s]['total']})" for s in splits])
    ax.set_ylabel("images")
    ax.set_xlabel("split")
    ax.set_title(f"Class balance per split (patient-grouped; test: {plan.test_source})")
    ax.legend()
    ax.margins(y=0.12)
    return _save(fig, out)


def _hist_per_class(
    ax: Axes, data: dict[str, list[float]], bins: int | np.ndarray, xlabel: str
) -> None:
    for cls, vals in data.items():
        if vals:
            label = f"{cls} (n={len(vals)})"
            ax.hist(vals, bins=bins, alpha=0.55, density=True, color=COLOURS[cls], label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)


def intensity_histograms(audit: AuditReport, out: Path) -> Path:
    """Per-image mean intensity, contrast (std) and sharpness per class.

    A class difference here is a shortcut a model could learn instead of the lungs.
    """
    by = audit.rows_by_class()
    fig = Figure(layout="constrained", figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    panels = [
        ("mean", "mean intensity (0 = black, 1 = white)", np.linspace(0, 1, 41)),
        ("std", "intensity std (contrast)", np.linspace(0, 0.5, 41)),
        ("sharpness", "sharpness (Laplacian variance, 256 px resample)", 40),
    ]
    for ax, (attr, label, bins) in zip(axes, panels, strict=True):
        data = {cls: [getattr(r, attr) for r in rows] for cls, rows in by.items()}
        if attr == "sharpness":
            allv = [v for vs in data.values() for v in vs]
            hi = float(np.percentile(allv, 99)) if allv else 1.0
            bins = np.linspace(0, max(hi, 1e-6), 41)
        _hist_per_class(ax, data, bins, label)
        ax.set_title(label.split(" (")[0])
    fig.suptitle("Intensity statistics per class (one value per image)", fontsize=11)
    return _save(fig, out)


def size_histograms(audit: AuditReport, out: Path) -> Path:
    """Original width, height and file size per class (resolution is a classic shortcut)."""
    by = audit.rows_by_class()
    fig = Figure(layout="constrained", figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    panels = [("width", "width (px)"), ("height", "height (px)"), ("size", "file size (KB)")]
    for ax, (attr, label) in zip(axes, panels, strict=True):
        scale = 1 / 1024 if attr == "size" else 1
        data = {cls: [getattr(r, attr) * scale for r in rows] for cls, rows in by.items()}
        allv = [v for vs in data.values() for v in vs]
        lo, hi = (min(allv), max(allv)) if allv else (0, 1)
        if hi - lo < 1e-9:  # all equal (e.g. every copy resized to 224 px): one visible bar
            lo, hi = lo - 0.5 * max(abs(lo) * 0.05, 1), hi + 0.5 * max(abs(hi) * 0.05, 1)
        _hist_per_class(ax, data, np.linspace(lo, hi, 31), label)
        ax.set_title(label.split(" (")[0])
    fig.suptitle("Image size per class (original files, before preprocessing)", fontsize=11)
    return _save(fig, out)


def preprocessing_steps(path: str | Path, cfg: PreprocessConfig, out: Path) -> Path:
    """One X-ray after each step of :func:`study.data.preprocess.steps`, with its histogram."""
    st = steps(Path(path).read_bytes(), cfg)
    fig = Figure(layout="constrained", figsize=(3.2 * len(st), 5.0))
    axes = fig.subplots(2, len(st), squeeze=False, height_ratios=[3, 1])
    for k, (name, img) in enumerate(st):
        ax = axes[0, k]
        ax.imshow(img, cmap="gray")
        ax.set_title(f"{k + 1}. {name}\n{img.shape[1]}x{img.shape[0]} {img.dtype}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        hx = axes[1, k]
        top = 65535 if img.dtype == np.uint16 else 255
        hx.hist(img.ravel(), bins=64, range=(0, top), color="0.3")
        hx.set_xlabel("pixel value")
        if k == 0:
            hx.set_ylabel("pixels")
        hx.ticklabel_format(axis="y", style="sci", scilimits=(0, 3))
    fig.suptitle(f"Preprocessing steps: {Path(path).name}", fontsize=11)
    return _save(fig, out)


def write_data_figures(
    records: Sequence[ImageRecord],
    plan: SplitPlan,
    audit: AuditReport,
    figures_dir: Path,
    cfg: PreprocessConfig | None = None,
    example: str | Path | None = None,
) -> list[Path]:
    """All data figures into ``figures_dir``, named as the report's data section reads them.

    The only writer of figures/*.png; the example X-ray defaults to the first readable one.
    """
    figures_dir = Path(figures_dir)
    cfg = cfg or PreprocessConfig()
    if example is None:
        ok = [r.path for r, row in zip(audit.records, audit.rows, strict=True) if row.ok]
        example = ok[0] if ok else None
    paths = [
        sample_grid(records, figures_dir / "samples.png"),
        class_balance(plan, figures_dir / "class_balance.png"),
        intensity_histograms(audit, figures_dir / "intensity.png"),
        size_histograms(audit, figures_dir / "sizes.png"),
    ]
    if example is not None:
        paths.append(preprocessing_steps(example, cfg, figures_dir / "preprocessing.png"))
    return paths


def corruption_gallery(image_path: str | Path, cfg: PreprocessConfig, out_png: Path) -> Path:
    """One X-ray under each shift corruption x severity, as the device would have produced it.

    Shows the corrupted 8-bit image (before normalise/resize), to check by eye that each
    corruption looks like a plausible other hospital, not an absurd artefact.
    """
    base = windowed(decode(Path(image_path).read_bytes()).pixels, cfg)
    fig = Figure(layout="constrained", figsize=(2.0 * (1 + len(SEVERITIES)), 2.1 * len(Corruption)))
    axes = fig.subplots(len(Corruption), 1 + len(SEVERITIES), squeeze=False)
    for row, name in enumerate(Corruption):
        shown = [("clean", base)]
        for s in SEVERITIES:
            img = corrupt(base, name, s, condition_rng(SAMPLE_SEED, name, 0))
            shown.append((f"severity {s}", img))
        for col, (title, img) in enumerate(shown):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{name}: {title}" if col else title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Shift corruptions (before normalise/resize): {Path(image_path).name}")
    return _save(fig, out_png)
