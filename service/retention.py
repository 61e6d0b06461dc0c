"""Retention: delete old uploads nobody labelled, with their jobs and files.

``python -m service purge --older-than DAYS`` runs it once; RETENTION_DAYS
makes every worker run it every PURGE_INTERVAL_SECONDS (idempotent, so
several workers purging at once is harmless).

What is kept: a labelled upload, until export-feedback has exported its
current label (``labels.exported_at`` not older than ``updated_at``): a
reviewer's work is never lost before it reached the training data. An
upload with a job still queued or running is kept too.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, or_, select
from sqlalchemy.exc import DBAPIError

from service.db import Database
from service.models import JobStatus, Label, Prediction, Upload, utcnow
from service.storage import Storage

BATCH = 500


@dataclass(frozen=True)
class Purged:
    uploads: int = 0
    predictions: int = 0
    files: int = 0

    def __add__(self, o: Purged) -> Purged:
        return Purged(
            self.uploads + o.uploads, self.predictions + o.predictions, self.files + o.files
        )


def _purgeable(cutoff: datetime) -> object:
    """SQL: uploads older than the cut-off, unlabelled (or label exported), no live job."""
    unexported_label = select(Label.id).where(
        Label.upload_id == Upload.id,
        or_(Label.exported_at.is_(None), Label.exported_at < Label.updated_at),
    )
    live = select(Prediction.id).where(
        Prediction.upload_id == Upload.id,
        Prediction.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
    )
    return and_(Upload.created_at < cutoff, ~exists(unexported_label), ~exists(live))


def _purge_batch(db: Database, storage: Storage, cutoff: datetime) -> Purged:
    """Rows first (one transaction), then the files no remaining row refers to."""
    with db.session() as s:
        ups = s.execute(
            select(Upload.id, Upload.storage_key).where(_purgeable(cutoff)).limit(BATCH)
        ).all()
        if not ups:
            return Purged()
        ids = [u[0] for u in ups]
        heatmaps = set(
            s.execute(
                select(Prediction.heatmap_key).where(
                    Prediction.upload_id.in_(ids), Prediction.heatmap_key.is_not(None)
                )
            ).scalars()
        )
        n_pred = s.execute(delete(Prediction).where(Prediction.upload_id.in_(ids))).rowcount
        s.execute(delete(Label).where(Label.upload_id.in_(ids)))
        s.execute(delete(Upload).where(Upload.id.in_(ids)))
        shared = set(
            s.execute(
                select(Prediction.heatmap_key).where(Prediction.heatmap_key.in_(heatmaps))
            ).scalars()
        )
    keys = {u[1] for u in ups} | (heatmaps - shared)
    with db.session() as s:  # the same bytes uploaded again meanwhile: keep their file
        again = select(Upload.storage_key).where(Upload.storage_key.in_(keys))
        keys -= set(s.execute(again).scalars())
    for key in keys:
        storage.delete(key)
    return Purged(len(ids), int(n_pred or 0), len(keys))


def purge(
    db: Database, storage: Storage, older_than_days: float, now: datetime | None = None
) -> Purged:
    """Delete every purgeable upload created more than ``older_than_days`` before ``now``."""
    cutoff = (now or utcnow()) - timedelta(days=older_than_days)
    total = Purged()
    while True:
        done = _purge_batch(db, storage, cutoff)
        total = total + done
        if done.uploads < BATCH:
            return total


def main(argv: list[str] | None = None) -> int:
    from service.settings import Settings
    from service.storage import LocalStorage

    p = argparse.ArgumentParser(
        prog="python -m service purge",
        description="Delete unlabelled uploads (and exported labelled ones) older than DAYS.",
    )
    p.add_argument(
        "--older-than", type=float, required=True, metavar="DAYS", help="age cut-off in days"
    )
    args = p.parse_args(argv)
    if args.older_than < 0:
        p.error("--older-than must be >= 0")
    settings = Settings()
    db = Database(settings.db_url)
    try:
        done = purge(db, LocalStorage(settings.storage_root), args.older_than)
    except DBAPIError as exc:
        print(
            f"purge: database unreachable or not migrated ({type(exc.orig).__name__}); "
            "nothing deleted",
            file=sys.stderr,
        )
        return 2
    finally:
        db.dispose()
    print(f"purged {done.uploads} uploads, {done.predictions} predictions, {done.files} files")
    return 0
