"""Reviewed uploads -> the Kaggle layout, so the study can train on them.

``out_dir/train/{NORMAL,PNEUMONIA}/<sha256>.png``. Every file is written as
a lossless PNG of the *decoded* pixels (the study's decode, nothing further):
JPEG and PNG keep their pixels, DICOMs become PNGs the study can read, 16-bit
stays 16-bit, and the study applies its own preprocessing as to any other image.
Re-running is idempotent; a re-review that changed the label moves the file to
the other class.

Only reviewer labels are exported, never the model's answers. An upload the
input gate rejected (its latest finished job is ``rejected``) is exported only
because a reviewer labelled it explicitly, and is counted apart
(``gate_rejected``), so a run that suddenly trains on many of them shows it.
Each exported label gets ``exported_at``: retention (service.retention) keeps
a labelled upload until then.

Run as ``python -m service export-feedback [--database-url URL] [--storage-dir DIR]
[--out DIR]`` (``python run_study.py data export-feedback ...`` is an alias that
runs it in a subprocess, so the study never imports the service).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db import Database
from service.models import LABELS, JobStatus, Label, Prediction, Upload, utcnow
from service.storage import LocalStorage, Storage
from study.serving import ImageDecodeError, decode

log = logging.getLogger("service.feedback")


def to_png(data: bytes) -> bytes:
    """Decoded pixels as PNG: uint8/uint16 as they are, floats (DICOM LUT output) to 16 bits."""
    px = decode(data).pixels
    if px.dtype not in (np.uint8, np.uint16):
        f = np.nan_to_num(px.astype(np.float64))
        lo, hi = float(f.min()), float(f.max())
        if lo >= 0 and hi <= 65535:
            px = np.rint(f).astype(np.uint16)
        else:
            scale = 65535.0 / (hi - lo) if hi > lo else 0.0
            px = np.rint((f - lo) * scale).astype(np.uint16)
    ok, buf = cv2.imencode(".png", px)
    if not ok:
        raise ImageDecodeError("could not encode PNG")
    return buf.tobytes()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _gate_rejected(s: Session) -> set[str]:
    """Labelled uploads whose latest finished job was rejected by the input gate."""
    rows = s.execute(
        select(Prediction.upload_id, Prediction.status)
        .join(Label, Label.upload_id == Prediction.upload_id)
        .where(Prediction.status.in_([JobStatus.DONE, JobStatus.REJECTED]))
        .order_by(Prediction.finished_at)
    ).all()
    latest = dict(rows)  # ordered by finish time: the last one wins
    return {u for u, st in latest.items() if st == JobStatus.REJECTED}


def _reviewed(database_url: str) -> tuple[list, set[str]]:
    db = Database(database_url)
    try:
        with db.session() as s:
            rows = s.execute(
                select(Label.id, Upload.id, Upload.sha256, Upload.storage_key, Label.label).join(
                    Label, Label.upload_id == Upload.id
                )
            ).all()
            rejected = _gate_rejected(s)
    finally:
        db.dispose()
    return rows, rejected


def _mark_exported(database_url: str, label_ids: list[str], when: datetime) -> None:
    """``when`` is the time the labels were read: a re-review after it is not exported."""
    db = Database(database_url)
    try:
        with db.session() as s:
            for i in range(0, len(label_ids), 500):
                s.execute(
                    update(Label)
                    .where(Label.id.in_(label_ids[i : i + 500]))
                    .values(exported_at=when)
                )
    finally:
        db.dispose()


def _export_one(storage: Storage, out_dir: Path, sha: str, key: str, label: str) -> bool:
    """Write one reviewed upload under its label (moving it if the label changed)."""
    target = out_dir / "train" / label / f"{sha}.png"
    for other in LABELS:
        if other != label:
            (out_dir / "train" / other / f"{sha}.png").unlink(missing_ok=True)
    if not target.is_file():
        try:
            _write_atomic(target, to_png(storage.get(key)))
        except (ImageDecodeError, FileNotFoundError) as exc:
            log.warning("upload %s not exported: %s", sha[:12], type(exc).__name__)
            return False
    return True


def export_feedback(database_url: str, storage: Storage, out_dir: Path) -> dict[str, int]:
    """Write every reviewed upload; counts per label, 'skipped' (unreadable) and
    'gate_rejected' (exported only for their reviewer label; also in their label's count)."""
    out_dir = Path(out_dir)
    read_at = utcnow()
    rows, rejected = _reviewed(database_url)
    counts = {name: 0 for name in LABELS} | {"skipped": 0, "gate_rejected": 0}
    exported: list[str] = []
    for label_id, upload_id, sha, key, label in rows:
        if label not in LABELS or not _export_one(storage, out_dir, sha, key, label):
            counts["skipped"] += 1
            continue
        counts[label] += 1
        counts["gate_rejected"] += upload_id in rejected
        exported.append(label_id)
    if exported:
        _mark_exported(database_url, exported, read_at)
    return counts


def main(argv: list[str] | None = None) -> int:
    from service.settings import Settings

    p = argparse.ArgumentParser(
        prog="python -m service export-feedback",
        description="Export reviewed uploads in the Kaggle layout.",
    )
    p.add_argument("--database-url", default=None, help="default: the service's DATABASE_URL")
    p.add_argument("--storage-dir", type=Path, default=None, help="default: STORAGE_DIR")
    p.add_argument("--out", type=Path, default=Path("data/feedback"))
    args = p.parse_args(argv)
    settings = Settings()
    storage = LocalStorage(args.storage_dir or settings.storage_root)
    counts = export_feedback(args.database_url or settings.db_url, storage, args.out)
    print(f"exported to {args.out}/train: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
