"""The prediction job: claim, gate, predict, heatmap, write. Runs in a worker process only.

Idempotent: :func:`service.jobs.claim` lets exactly one live worker process
a job; a redelivered message for a finished job returns at once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from service import jobs
from service.db import Database
from service.gate import run_gate
from service.inference import ModelRuntime
from service.queue import QUEUE, TASK_NAME, Publisher
from service.settings import Settings
from service.storage import Storage

log = logging.getLogger("service.worker")


@dataclass
class WorkerState:
    """Everything a job needs, built once per worker process."""

    settings: Settings
    db: Database
    storage: Storage
    runtime: ModelRuntime
    publisher: Publisher
    # The jobs this process holds: id -> (its claim, time.monotonic() when it started).
    current: dict[str, tuple[jobs.Claimed, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_STATE: WorkerState | None = None


def set_state(state: WorkerState) -> None:
    global _STATE
    _STATE = state


def register(app: Celery) -> None:
    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, queue=QUEUE)
    def predict(prediction_id: str) -> str:
        if _STATE is None:
            raise RuntimeError("worker state not initialised")
        return process(_STATE, prediction_id)


def process(state: WorkerState, prediction_id: str) -> str:
    """One job; returns what happened ("skipped", "done", "rejected", "failed")."""
    s = state.settings
    claimed = jobs.claim(state.db, prediction_id, s.lease_seconds)
    if claimed is None:
        log.info("prediction %s: nothing to do (finished or held by a live worker)", prediction_id)
        return "skipped"
    if claimed.attempts > s.max_attempts:
        jobs.finish_failed(state.db, claimed, "the worker stopped too many times on this job")
        return "failed"
    with state.lock:
        state.current[prediction_id] = (claimed, time.monotonic())
    t0 = time.perf_counter()
    try:
        return _run(state, claimed, t0)
    except Exception as exc:
        log.exception("prediction %s failed", prediction_id)
        jobs.finish_failed(state.db, claimed, f"processing error ({type(exc).__name__})")
        return "failed"
    finally:
        with state.lock:
            state.current.pop(prediction_id, None)


def _safe_meta(gate: Any) -> dict[str, Any]:
    """The gate's safe DICOM fields plus the decoded size (jobs.SAFE_META filters again)."""
    meta = dict(gate.meta or {})
    if gate.decoded is not None:
        shape = gate.decoded.pixels.shape
        meta.setdefault("height", int(shape[0]))
        meta.setdefault("width", int(shape[1]))
        meta.setdefault("bit_depth", gate.decoded.meta.get("bit_depth"))
    return meta


def _run(state: WorkerState, claimed: jobs.Claimed, t0: float) -> str:
    s = state.settings
    data = state.storage.get(claimed.storage_key)
    gate = run_gate(data, s)
    gate_ms = (time.perf_counter() - t0) * 1000.0
    jobs.store_upload_meta(state.db, claimed.upload_id, _safe_meta(gate))
    if s.task_delay_seconds > 0:  # test-only: a deterministic window to kill the worker in
        time.sleep(s.task_delay_seconds)
    if not gate.accepted:
        rejection: dict[str, Any] = {
            "code": gate.code,
            "message": gate.message,
            "checks": gate.checks or {},
        }
        total = (time.perf_counter() - t0) * 1000.0
        jobs.finish_rejected(state.db, claimed, rejection, gate_ms=gate_ms, total_ms=total)
        log.info("prediction %s: rejected (%s)", claimed.prediction_id, gate.code)
        return "rejected"
    pixels = gate.decoded.pixels if gate.decoded is not None else None
    out = state.runtime.run(data, pixels)
    heatmap_key = state.storage.put(out.heatmap_png)
    finished = jobs.finish_done(
        state.db,
        claimed,
        label=out.label,
        probability=out.probability,
        threshold=out.threshold,
        model_name=state.runtime.name,
        model_version=state.runtime.version,
        heatmap_key=heatmap_key,
        gate_ms=gate_ms,
        inference_ms=out.inference_ms,
        heatmap_ms=out.heatmap_ms,
        total_ms=(time.perf_counter() - t0) * 1000.0,
    )
    note = "" if finished else " (not saved: another claim owns the job)"
    log.info("prediction %s: done%s", claimed.prediction_id, note)
    return "done"
