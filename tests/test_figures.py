"""Data figures: each one is written, is a real PNG, and is not blank."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from study.data.audit import audit_dataset
from study.data.preprocess import PreprocessConfig
from study.data.records import make_splits, scan
from study.report.data_figures import (
    class_balance,
    intensity_histograms,
    preprocessing_steps,
    sample_grid,
    size_histograms,
    write_data_figures,
)
from tests.test_audit import make_subset


@pytest.fixture(scope="module")
def study_data(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = make_subset(data_dir, tmp_path_factory.mktemp("fig") / "chest_xray", per_class=20)
    records = scan(root)
    report = audit_dataset(records, workers=1, progress=False, cache_dir=None)
    plan = make_splits(records, linked=report.linked_clusters())
    return root, records, report, plan


def _check_png(path: Path, min_w: int = 300) -> None:
    assert path.is_file() and path.stat().st_size > 5_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None and img.shape[1] >= min_w
    assert float(np.std(img)) > 5  # not a blank canvas


def test_each_figure_is_written(study_data, tmp_path):
    root, records, report, plan = study_data
    figs = tmp_path / "results" / "s1" / "figures"
    paths = [
        sample_grid(records, figs / "samples.png"),
        class_balance(plan, figs / "class_balance.png"),
        intensity_histograms(report, figs / "intensity.png"),
        size_histograms(report, figs / "sizes.png"),
        preprocessing_steps(records[0].path, PreprocessConfig(), figs / "steps.png"),
    ]
    for p in paths:
        assert p.parent == figs
        _check_png(p)
    assert sample_grid(records, figs / "again.png").read_bytes() == paths[0].read_bytes()


def test_preprocessing_steps_on_16_bit_and_all_figures(study_data, tmp_path):
    root, records, report, plan = study_data
    g = cv2.imread(records[0].path, cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 257
    png16 = tmp_path / "x16.png"
    cv2.imwrite(str(png16), g)
    cfg = PreprocessConfig(image_size=96, normalise="equalize", resize="pad")
    _check_png(preprocessing_steps(png16, cfg, tmp_path / "steps16.png"))
    paths = write_data_figures(records, plan, report, tmp_path / "figures")
    assert len(paths) == 5
    for p in paths:
        _check_png(p)
