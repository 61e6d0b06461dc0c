"""TFDS builder: same images, labels, patients and split membership as the study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO, copy_patients

tfds = pytest.importorskip("tensorflow_datasets")

import study.data.tfds_builder as tfds_builder  # noqa: E402 - registers the builder
from study.config import StudyConfig  # noqa: E402
from study.data.audit import audit_dataset  # noqa: E402
from study.data.datasets import prepare_data  # noqa: E402
from study.data.records import SPLITS, make_splits, scan  # noqa: E402

GREY_COPY = "IM-9999-0001.png"


@pytest.fixture
def tiny(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """~30 train images of 20 patients, plus a grey PNG copy of a NORMAL image under a
    new patient id (a near duplicate the split must keep with its source)."""
    root = copy_patients(data_dir, tmp_path / "chest_xray", "train", per_class=10)
    src = sorted((root / "train" / "NORMAL").iterdir())[0]
    grey = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(root / "train" / "NORMAL" / GREY_COPY), grey)
    monkeypatch.setattr(tfds_builder, "AUDIT_CACHE_DIR", tmp_path / "audit-cache")
    return root


def _load(root: Path, data_dir: Path, **builder_kwargs) -> dict:
    """Every split as {file name relative to root: example}."""
    ds = tfds.load(
        "kermany_chest_xray",
        data_dir=str(data_dir),
        builder_kwargs=builder_kwargs,
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir=str(root))
        },
    )
    return {s: {ex["image/filename"].decode(): ex for ex in tfds.as_numpy(ds[s])} for s in SPLITS}


def _rel(root: Path, path: str) -> str:
    return Path(path).relative_to(root).as_posix()


def _expected(root: Path, seed: int) -> dict[str, list]:
    """The study's split rule, computed independently of the builder."""
    cfg = StudyConfig()
    records = scan(root)
    audit = audit_dataset(records, progress=False, cache_dir=None)
    assert audit.linked_clusters(), "the grey PNG copy must be found as a duplicate"
    plan = make_splits(
        records,
        linked=audit.linked_clusters(),
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seed=seed,
    )
    return {s: plan.of(s) for s in SPLITS}


def test_tfds_splits_images_and_labels_match_the_study(tiny: Path, tmp_path: Path) -> None:
    got = _load(tiny, tmp_path / "tfds")
    want = _expected(tiny, StudyConfig().seed)
    assert sum(len(v) for v in got.values()) == len(scan(tiny)) == 31
    for split in SPLITS:
        assert want[split], f"empty {split} split: the fixture is too small"
        assert sorted(got[split]) == sorted(_rel(tiny, r.path) for r in want[split])
        assert {ex["patient"].decode() for ex in got[split].values()} == {
            r.patient for r in want[split]
        }
        for r in want[split]:
            ex = got[split][_rel(tiny, r.path)]
            assert ex["label"] == r.label
            assert ex["patient"].decode() == r.patient
            assert ex["subtype"].decode() == r.subtype
            stored = cv2.cvtColor(cv2.imread(r.path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(ex["image"], stored, err_msg=r.path)

    split_of = {name: s for s in SPLITS for name in got[s]}
    source = sorted((tiny / "train" / "NORMAL").iterdir())[0]
    assert split_of[f"train/NORMAL/{GREY_COPY}"] == split_of[_rel(tiny, str(source))]

    # The study's own splits.json (prepare_data) holds the same files per split.
    cfg = StudyConfig(
        data_dir=tiny, results_dir=tmp_path / "results", cache_dir=tmp_path / "cache", workers=1
    )
    prepare_data(cfg)
    files = json.loads((cfg.study_dir / "splits.json").read_text())["files"]
    for split in SPLITS:
        assert sorted(_rel(tiny, p) for p in files[split]) == sorted(got[split])


def test_command_line_builds_a_seeded_config(tiny: Path, tmp_path: Path) -> None:
    """The README's command: another seed is its own config, split as make_splits does."""
    out = tmp_path / "tfds"
    env = os.environ | {"PNEUMOSCOPE_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "study.data.tfds_cli", "--data-dir", str(tiny), "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--seed", "7"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kermany_chest_xray/seed7/1.0.0" in proc.stdout
    config = tfds_builder.KermanyChestXrayConfig(name="seed7", seed=7)
    got = _load(Path("/nonexistent-manual-dir"), out, config=config)  # prepared: not rebuilt
    want = _expected(tiny, 7)
    default = _expected(tiny, StudyConfig().seed)
    assert any({r.path for r in want[s]} != {r.path for r in default[s]} for s in SPLITS)
    for split in SPLITS:
        assert sorted(got[split]) == sorted(_rel(tiny, r.path) for r in want[split])
