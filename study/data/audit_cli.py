"""`run_study.py data audit`: audit a data folder on its own, before any training."""

from __future__ import annotations

import json
from pathlib import Path

from study.data import records as data_mod
from study.data.audit import audit_dataset
from study.data.datasets import plan_splits
from study.paths import DEFAULT_CACHE_DIR


def run_audit(
    data_dir: Path, out_dir: Path, workers: int = 2, seed: int = data_mod.DEFAULT_SEED
) -> int:
    """Write audit.json (with the leakage check after the study's patient-grouped splits).

    Any subset of train/val/test is audited; the splits are planned only when there
    is a train folder to split, as the study needs one.
    """
    records = data_mod.scan(data_dir, require_train=False)
    report = audit_dataset(records, workers=workers, cache_dir=DEFAULT_CACHE_DIR / "audit")
    plan = None
    if any(r.source_split == "train" for r in records):
        plan = plan_splits(records, report, seed=seed)
    else:
        report.notes.append("no train folder: patient-grouped splits not planned")
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = report.to_json(plan)
    if plan is not None:
        doc["after_split"] = report.cross_split(plan)
    (out_dir / "audit.json").write_text(json.dumps(doc, indent=1))
    print(report.summary(plan))
    if plan is not None:
        print(plan.summary())
    print(f"wrote {out_dir / 'audit.json'}")
    return 0
