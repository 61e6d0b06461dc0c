"""`run_study.py data audit`: audit a data folder on its own, before any training."""

from __future__ import annotations

import json
from pathlib import Path

from study.data import records as data_mod
from study.data.audit import audit_dataset
from study.paths import DEFAULT_CACHE_DIR


def run_audit(data_dir: Path, out_dir: Path, workers: int = 2, seed: int = 42) -> int:
    """Write audit.json (with the leakage check after patient-grouped splitting)."""
    records = data_mod.scan(data_dir)
    report = audit_dataset(records, workers=workers, cache_dir=DEFAULT_CACHE_DIR / "audit")
    plan = data_mod.make_splits(records, linked=report.linked_clusters(), seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = report.to_json(plan)
    doc["after_split"] = report.cross_split(plan)
    (out_dir / "audit.json").write_text(json.dumps(doc, indent=1))
    print(report.summary(plan))
    print(plan.summary())
    print(f"wrote {out_dir / 'audit.json'}")
    return 0
