"""A reviewed upload that duplicates a validation or test image is dropped from training,
with a note, and the study's data stage goes on (issue #13)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from study.data import records as data_mod
from study.data.audit import audit_dataset
from study.data.datasets import plan_splits


def _write(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (96, 96), dtype=np.uint8), (5, 5), 0)
    cv2.imwrite(str(path), img)
    return path


def _dataset(root: Path) -> dict[str, Path]:
    """A tiny Kaggle-layout set: one image per patient, 20 per class in train, 4 elsewhere."""
    files: dict[str, Path] = {}
    seed = 0
    for split in ("train", "val", "test"):
        for cls, tag in (("NORMAL", "IM"), ("PNEUMONIA", "person")):
            for i in range(20 if split == "train" else 4):
                seed += 1
                name = (
                    f"{tag}-{split}{i}-0001.png" if tag == "IM" else f"{tag}{seed}_bacteria_1.png"
                )
                files[f"{split}/{cls}/{i}"] = _write(root / split / cls / name, seed)
    return files


def test_feedback_duplicating_val_or_test_is_dropped_not_fatal(tmp_path: Path) -> None:
    files = _dataset(tmp_path / "data")
    fb = tmp_path / "feedback" / "train"
    (fb / "NORMAL").mkdir(parents=True)
    (fb / "PNEUMONIA").mkdir(parents=True)
    (fb / "NORMAL" / "aaa.png").write_bytes(files["test/NORMAL/0"].read_bytes())  # exact copy
    (fb / "PNEUMONIA" / "bbb.png").write_bytes(files["val/PNEUMONIA/1"].read_bytes())
    _write(fb / "PNEUMONIA" / "ccc.png", 999)  # a genuinely new image
    (fb / "NORMAL" / "ddd.png").write_bytes(files["train/NORMAL/2"].read_bytes())  # train dup: ok
    records = data_mod.scan(tmp_path / "data")
    extra = data_mod.scan(tmp_path / "feedback", origin="feedback")
    audit = audit_dataset(records + extra, workers=1, progress=False, cache_dir=None)
    plan = plan_splits(records, audit, extra)  # raised a leakage AssertionError before
    train_feedback = sorted(Path(r.path).name for r in plan.of("train") if r.origin == "feedback")
    assert train_feedback == ["ccc.png", "ddd.png"]
    held_out = {Path(r.path).name for s in ("val", "test") for r in plan.of(s)}
    assert not held_out & {"aaa.png", "bbb.png"}
    note = next(n for n in plan.notes if n.startswith("dropped"))
    assert "2 reviewed uploads" in note and "aaa.png" in note and "bbb.png" in note
    assert "dropped 2 reviewed uploads" in plan.summary()
