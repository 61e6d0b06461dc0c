"""pneumoscope service: upload a chest X-ray, get a queued job, poll for label + Grad-CAM.

Layout (one concern per module)::

    __main__.py     python -m service [embedded|api|worker|migrate|export-feedback]
    settings.py     the one Settings object (env vars, documented per field)
    api.py          FastAPI app factory; routers/{predictions,uploads,health}.py
    context.py      shared per-app objects, API-key dependency
    errors.py       the JSON error body and global handlers (never a traceback)
    metrics.py      Prometheus: HTTP counts/latency; job figures read from the DB
    schemas.py      the public JSON contract
    intake.py       bytes -> upload row + queued prediction (one transaction)
    queue.py        Celery app, Publisher (send / ping)
    worker.py       one worker process = one loaded, warmed-up model (solo pool)
    tasks.py        the job: claim -> gate -> predict -> heatmap -> write
    jobs.py         atomic job state transitions (claim/lease/finish/sweep queries)
    sweeper.py      worker thread: heartbeat, lease renewal, re-send lost jobs
    inference.py    the model in the worker (Winner.prepare, Grad-CAM)
    db.py, models.py, migrate.py, migrations/   SQLAlchemy 2 + Alembic
    storage.py      Storage protocol; content-addressed local directory
    preview.py      grey PNG preview of an upload (DICOM too) for the reviewer page
    feedback.py     reviewed uploads -> Kaggle layout for the study
    gate.py         the input gate (its fitted part: study.gate, loaded through study.serving)

The study is reached only through ``study.serving`` (tests/test_architecture.py).

Decisions:
- A duplicate upload (same SHA-256) reuses the upload row and stored file and
  creates a new prediction (each POST is one job).
- Broker down at upload time: 503 ``broker_unavailable``, the prediction row
  is withdrawn (nothing half-accepted); jobs already queued are never lost,
  because the database is the source of truth and workers re-send stale jobs.
- A job is redone when its worker dies: acks_late + reject_on_worker_lost,
  plus a lease that other workers may take over once it expires.
"""
