"""Turning accepted bytes into an upload row + a queued prediction, in one transaction.

Duplicates: the same bytes (same SHA-256) reuse the upload row and stored
file, and every POST creates a NEW prediction. Why: the model may have
changed since, a failed job can be retried by re-uploading, and each client
gets a job of its own; the reviewer queue lists uploads, so it has no
duplicates either way.
"""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from service.db import Database
from service.models import JobStatus, Prediction, Upload
from service.storage import Storage

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "dicom": "application/dicom"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitise_name(name: str | None) -> str:
    """Display-only: the last path part, safe characters, 100 chars. Never used as a path."""
    base = re.split(r"[\\/]", name or "")[-1]
    clean = _UNSAFE.sub("_", base).strip("._")[:100]
    return clean or "upload"


def create_job(
    db: Database, storage: Storage, data: bytes, name: str | None, fmt: str
) -> tuple[str, str]:
    """Store the bytes, then (upload, prediction) rows atomically; returns their ids."""
    sha = hashlib.sha256(data).hexdigest()
    key = storage.put(data)
    for attempt in range(3):
        try:
            with db.session() as s:
                upload = s.execute(select(Upload).where(Upload.sha256 == sha)).scalar_one_or_none()
                if upload is None:
                    upload = Upload(
                        sha256=sha,
                        original_name=sanitise_name(name),
                        content_type=CONTENT_TYPES.get(fmt, "application/octet-stream"),
                        size_bytes=len(data),
                        storage_key=key,
                    )
                    s.add(upload)
                    s.flush()
                pred = Prediction(upload_id=upload.id, status=JobStatus.QUEUED)
                s.add(pred)
                s.flush()
                return upload.id, pred.id
        except IntegrityError:  # a concurrent upload of the same bytes won the insert
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def withdraw(db: Database, prediction_id: str) -> None:
    """The broker refused the job: remove the queued prediction so no half-accepted job remains."""
    with db.session() as s:
        s.execute(
            delete(Prediction).where(
                Prediction.id == prediction_id, Prediction.status == JobStatus.QUEUED
            )
        )
