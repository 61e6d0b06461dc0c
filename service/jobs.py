"""Job state transitions in the database, each one atomic (a single guarded UPDATE).

``claim`` is what makes the task idempotent and a killed worker's job
redoable: a job is taken only if it is queued, or running with an expired
lease (its worker stopped renewing it). A redelivered message for a job that
is done, rejected, failed, or held by a live worker changes nothing.

The claim token is ``attempts``: each claim increments it in the same guarded
UPDATE, so ``(id, attempts)`` names exactly one claim. Renewing and finishing
require it, so a worker whose lease expired (paused, hung, cut off) and whose
job was taken over can neither extend nor overwrite the new owner's work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from service.db import Database
from service.models import JobStatus, Prediction, Upload, WorkerBeat, utcnow

# Only these gate/DICOM fields ever reach the uploads table (no patient identifiers).
SAFE_META = {
    "Modality": "modality",
    "BodyPartExamined": "body_part_examined",
    "ViewPosition": "view_position",
    "PhotometricInterpretation": "photometric_interpretation",
    "bit_depth": "bit_depth",
    "width": "width",
    "height": "height",
}


@dataclass(frozen=True)
class Claimed:
    """One claim of one job; ``attempts`` is its token (see the module doc)."""

    prediction_id: str
    upload_id: str
    storage_key: str
    attempts: int

    def owns(self) -> Any:
        """SQL: the job is still running under this claim."""
        return and_(
            Prediction.id == self.prediction_id,
            Prediction.status == JobStatus.RUNNING,
            Prediction.attempts == self.attempts,
        )


def json_safe(obj: Any) -> Any:
    """Gate checks may carry NumPy scalars; the JSON column wants plain types."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def claim(db: Database, prediction_id: str, lease_seconds: float) -> Claimed | None:
    now = utcnow()
    with db.session() as s:
        res = s.execute(
            update(Prediction)
            .where(
                Prediction.id == prediction_id,
                or_(
                    Prediction.status == JobStatus.QUEUED,
                    and_(Prediction.status == JobStatus.RUNNING, Prediction.lease_until < now),
                ),
            )
            .values(
                status=JobStatus.RUNNING,
                attempts=Prediction.attempts + 1,
                started_at=now,
                lease_until=now + timedelta(seconds=lease_seconds),
            )
        )
        if res.rowcount != 1:
            return None
        row = s.execute(
            select(Prediction.upload_id, Upload.storage_key, Prediction.attempts)
            .join(Upload, Upload.id == Prediction.upload_id)
            .where(Prediction.id == prediction_id)
        ).one()
        return Claimed(prediction_id, row[0], row[1], int(row[2]))


def renew(db: Database, claimed: Claimed, lease_seconds: float) -> bool:
    """Extend the lease; False when this claim no longer owns the job (it was taken over)."""
    with db.session() as s:
        res = s.execute(
            update(Prediction)
            .where(claimed.owns())
            .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
        )
        return res.rowcount == 1


def _finish(db: Database, claimed: Claimed, **values: Any) -> bool:
    """Only the claim that owns a running job can finish it, and only once."""
    now = utcnow()
    with db.session() as s:
        res = s.execute(
            update(Prediction)
            .where(claimed.owns())
            .values(finished_at=now, lease_until=None, **values)
        )
        return res.rowcount == 1


def finish_done(db: Database, claimed: Claimed, **values: Any) -> bool:
    return _finish(db, claimed, status=JobStatus.DONE, **values)


def finish_rejected(db: Database, claimed: Claimed, rejection: dict[str, Any], **v: Any) -> bool:
    return _finish(db, claimed, status=JobStatus.REJECTED, rejection=json_safe(rejection), **v)


def finish_failed(db: Database, claimed: Claimed, error: str) -> bool:
    return _finish(db, claimed, status=JobStatus.FAILED, error=error[:1000])


def active_counts(db: Database) -> dict[str, int]:
    """Jobs queued and running. Cheap at any table size: the status index finds only
    active rows, and MAX_QUEUE_DEPTH bounds how many there are."""
    counts = {JobStatus.QUEUED.value: 0, JobStatus.RUNNING.value: 0}
    with db.session() as s:
        rows = s.execute(
            select(Prediction.status, func.count())
            .where(Prediction.status.in_(list(counts)))
            .group_by(Prediction.status)
        ).all()
    for status, n in rows:
        counts[status] = int(n)
    return counts


def store_upload_meta(db: Database, upload_id: str, meta: dict[str, Any]) -> None:
    """Copy the whitelisted, non-identifying fields the gate found onto the upload."""
    values: dict[str, Any] = {}
    for src, col in SAFE_META.items():
        v = meta.get(src)
        if v in (None, ""):
            continue
        values[col] = int(v) if col in ("bit_depth", "width", "height") else str(v)[:64]
    if values:
        with db.session() as s:
            s.execute(update(Upload).where(Upload.id == upload_id).values(**values))


def stale_jobs(db: Database, requeue_after: float, now: datetime | None = None) -> list[str]:
    """Running with an expired lease, or queued and sent long ago: their messages may be lost."""
    now = now or utcnow()
    old = now - timedelta(seconds=requeue_after)
    with db.session() as s:
        rows = s.execute(
            select(Prediction.id).where(
                or_(
                    and_(Prediction.status == JobStatus.RUNNING, Prediction.lease_until < now),
                    and_(Prediction.status == JobStatus.QUEUED, Prediction.enqueued_at < old),
                    and_(
                        Prediction.status == JobStatus.QUEUED,
                        Prediction.enqueued_at.is_(None),
                        Prediction.created_at < old,
                    ),
                )
            )
        ).all()
    return [r[0] for r in rows]


def fail_exhausted(db: Database, max_attempts: int) -> int:
    """Jobs that killed their worker max_attempts times are failed, not retried forever."""
    now = utcnow()
    with db.session() as s:
        res = s.execute(
            update(Prediction)
            .where(
                Prediction.status == JobStatus.RUNNING,
                Prediction.lease_until < now,
                Prediction.attempts >= max_attempts,
            )
            .values(
                status=JobStatus.FAILED,
                finished_at=now,
                lease_until=None,
                error="the worker stopped while processing this job, too many times",
            )
        )
        return int(res.rowcount or 0)


def mark_enqueued(db: Database, prediction_id: str) -> None:
    with db.session() as s:
        s.execute(
            update(Prediction).where(Prediction.id == prediction_id).values(enqueued_at=utcnow())
        )


def beat(db: Database, name: str, model_name: str | None, model_version: str | None) -> None:
    with db.session() as s:
        row = s.get(WorkerBeat, name)
        if row is None:
            s.add(WorkerBeat(name=name, model_name=model_name, model_version=model_version))
        else:
            row.beat_at = utcnow()
            row.model_name, row.model_version = model_name, model_version
