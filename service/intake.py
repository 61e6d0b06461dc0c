"""Turning accepted bytes into an upload row + a queued prediction, in one transaction.

Nothing identifying is written: a DICOM is replaced by its de-identified copy,
a JPEG or PNG by a copy without metadata (:func:`stored_bytes`), before it is
hashed and stored, and the client's file name is kept only when
STORE_CLIENT_FILENAMES is on.

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
from study.serving import deidentify_dicom, strip_metadata

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "dicom": "application/dicom"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitise_name(name: str | None) -> str:
    """Display-only: the last path part, safe characters, 100 chars. Never used as a path."""
    base = re.split(r"[\\/]", name or "")[-1]
    clean = _UNSAFE.sub("_", base).strip("._")[:100]
    return clean or "upload"


def stored_bytes(data: bytes, fmt: str, max_pixels: int) -> bytes:
    """What is stored for an upload: a DICOM's allow-list copy, a JPEG/PNG without its
    metadata. Raises ImageDecodeError when that cannot be made (nothing is stored)."""
    return deidentify_dicom(data, max_pixels) if fmt == "dicom" else strip_metadata(data, fmt)


def display_name(name: str | None, keep: bool) -> str | None:
    """The sanitised client file name when the setting keeps it, else None (create_job then
    names the upload from its content: ``upload-<sha256[:8]>.<format>``)."""
    return sanitise_name(name) if keep else None


def create_job(
    db: Database, storage: Storage, data: bytes, name: str | None, fmt: str
) -> tuple[str, str]:
    """Store the (already de-identified) bytes, then (upload, prediction) rows atomically;
    returns their ids. ``name`` is stored as given: pass :func:`display_name`'s answer."""
    sha = hashlib.sha256(data).hexdigest()
    key = storage.put(data)
    for attempt in range(3):
        try:
            with db.session() as s:
                upload = s.execute(select(Upload).where(Upload.sha256 == sha)).scalar_one_or_none()
                if upload is None:
                    upload = Upload(
                        sha256=sha,
                        original_name=name or f"upload-{sha[:8]}.{fmt}",
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
