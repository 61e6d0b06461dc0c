"""Reviewed uploads -> the Kaggle layout, so the study can train on them.

``out_dir/train/{NORMAL,PNEUMONIA}/<sha256>.png``. Every file is written as
a lossless PNG of the *decoded* pixels (the study's decode, nothing further):
JPEG and PNG keep their pixels, DICOMs become PNGs the study can read, 16-bit
stays 16-bit, and the study applies its own preprocessing as to any other image.
Re-running is idempotent; a re-review that changed the label moves the file to
the other class.

Run as ``python -m service export-feedback [--database-url URL] [--storage-dir DIR]
[--out DIR]`` (``python run_study.py data export-feedback ...`` is an alias that
runs it in a subprocess, so the study never imports the service).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import select

from service.db import Database
from service.models import LABELS, Label, Upload
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


def export_feedback(database_url: str, storage: Storage, out_dir: Path) -> dict[str, int]:
    """Write every reviewed upload; returns counts per label plus 'skipped' (unreadable)."""
    out_dir = Path(out_dir)
    db = Database(database_url)
    try:
        with db.session() as s:
            rows = s.execute(
                select(Upload.sha256, Upload.storage_key, Label.label).join(
                    Label, Label.upload_id == Upload.id
                )
            ).all()
    finally:
        db.dispose()
    counts = {name: 0 for name in LABELS} | {"skipped": 0}
    for sha, key, label in rows:
        if label not in LABELS:
            counts["skipped"] += 1
            continue
        target = out_dir / "train" / label / f"{sha}.png"
        for other in LABELS:
            if other != label:
                (out_dir / "train" / other / f"{sha}.png").unlink(missing_ok=True)
        if not target.is_file():
            try:
                _write_atomic(target, to_png(storage.get(key)))
            except (ImageDecodeError, FileNotFoundError) as exc:
                log.warning("upload %s not exported: %s", sha[:12], type(exc).__name__)
                counts["skipped"] += 1
                continue
        counts[label] += 1
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
