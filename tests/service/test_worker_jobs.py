"""Worker logic in-process: claiming (idempotency, leases), gate rejections, failures, sweeping."""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service import jobs, tasks
from service.api import create_app
from service.db import Database
from service.inference import Outcome
from service.intake import create_job
from service.models import Prediction, Upload, utcnow
from service.storage import LocalStorage
from service.sweeper import Sweeper
from tests.service_support import make_publisher, make_settings, queued_prediction_ids

PNG = b"\x89PNG\r\n\x1a\n-fake-heatmap"


class FakeRuntime:
    name, version = "fake", "v1"

    def __init__(self, fail: bool = False, label: str = "PNEUMONIA") -> None:
        self.fail = fail
        self.label = label
        self.calls = 0

    def run(self, data: bytes, pixels) -> Outcome:
        self.calls += 1
        if self.fail:
            raise RuntimeError("model exploded with /secret/path")
        return Outcome(0.8, self.label, 0.5, PNG, 1.0, 2.0)


class Accept:
    accepted, code, message, checks, decoded, meta = True, None, "ok", {}, None, {}


class Reject:
    accepted, code, message, decoded = False, "not_xray", "this looks like a photo", None
    checks = {"colour_fraction": {"value": 0.9, "threshold": 0.1, "passed": False}}
    meta = {"Modality": "OT", "PatientName": "must never be stored", "width": 10}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    s = make_settings(tmp_path, lease_seconds=30.0, requeue_after_seconds=60.0)
    db, storage, pub = Database(s.db_url), LocalStorage(s.storage_root), make_publisher(s)
    state = tasks.WorkerState(s, db, storage, FakeRuntime(), pub)  # type: ignore[arg-type]
    monkeypatch.setattr(tasks, "run_gate", lambda data, settings: Accept())
    client = TestClient(create_app(s, pub))
    yield state, client
    client.close()
    pub.app.close()
    db.dispose()


def job(state: tasks.WorkerState, data: bytes = b"\xff\xd8\xff-bytes") -> str:
    return create_job(state.db, state.storage, data, "x.jpeg", "jpeg")[1]


def test_done_then_redelivery_is_a_noop(world) -> None:
    state, client = world
    pid = job(state)
    assert tasks.process(state, pid) == "done"
    assert tasks.process(state, pid) == "skipped"  # a redelivered message changes nothing
    assert state.runtime.calls == 1
    body = client.get(f"/v1/predictions/{pid}").json()
    assert body["status"] == "done" and body["result"]["model"] == {"name": "fake", "version": "v1"}
    assert client.get(body["result"]["heatmap_url"]).content == PNG


def test_uncertain_answer_reaches_the_api(world) -> None:
    state, client = world
    state.runtime = FakeRuntime(label="UNCERTAIN")  # inside the winner's refer band
    pid = job(state)
    assert tasks.process(state, pid) == "done"
    result = client.get(f"/v1/predictions/{pid}").json()["result"]
    assert result["label"] == "UNCERTAIN" and result["probability_pneumonia"] == 0.8


def test_gate_rejection_ends_as_rejected_with_body(world, monkeypatch) -> None:
    state, client = world
    monkeypatch.setattr(tasks, "run_gate", lambda data, settings: Reject())
    pid = job(state)
    assert tasks.process(state, pid) == "rejected"
    body = client.get(f"/v1/predictions/{pid}").json()
    assert body["status"] == "rejected" and body["result"] is None
    assert body["rejection"] == {
        "code": "not_xray",
        "message": "this looks like a photo",
        "checks": Reject.checks,
    }
    assert state.runtime.calls == 0
    up = client.get("/v1/uploads", headers={"X-API-Key": state.settings.api_key.get_secret_value()})
    item = up.json()["items"][0]
    assert item["modality"] == "OT" and "must never" not in up.text  # only whitelisted fields


def test_processing_error_is_failed_without_internals(world) -> None:
    state, client = world
    state.runtime.fail = True
    pid = job(state)
    assert tasks.process(state, pid) == "failed"
    body = client.get(f"/v1/predictions/{pid}").json()
    assert body["status"] == "failed" and "secret" not in str(body)


def test_live_lease_blocks_expired_lease_allows_takeover(world) -> None:
    state, _ = world
    pid = job(state)
    first = jobs.claim(state.db, pid, 30)
    assert first is not None and first.attempts == 1
    assert jobs.claim(state.db, pid, 30) is None  # a live worker holds it
    with state.db.session() as s:
        s.execute(update(Prediction).values(lease_until=utcnow() - timedelta(seconds=1)))
    second = jobs.claim(state.db, pid, 30)
    assert second is not None and second.attempts == 2
    assert jobs.finish_done(state.db, second, label="NORMAL", probability=0.1)
    assert not jobs.finish_done(state.db, second, label="NORMAL", probability=0.1)  # only once


def test_job_that_keeps_killing_workers_fails(world) -> None:
    state, client = world
    pid = job(state)
    for _ in range(state.settings.max_attempts):
        assert jobs.claim(state.db, pid, 30) is not None
        with state.db.session() as s:
            s.execute(update(Prediction).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert jobs.fail_exhausted(state.db, state.settings.max_attempts) == 1
    assert client.get(f"/v1/predictions/{pid}").json()["status"] == "failed"


def test_sweeper_resends_lost_jobs_and_beats(world) -> None:
    state, client = world
    queued_long_ago, expired, fresh = job(state, b"a"), job(state, b"b"), job(state, b"c")
    old = utcnow() - timedelta(seconds=120)
    with state.db.session() as s:
        s.execute(
            update(Prediction).where(Prediction.id == queued_long_ago).values(enqueued_at=old)
        )
        s.execute(update(Prediction).where(Prediction.id == fresh).values(enqueued_at=utcnow()))
    assert jobs.claim(state.db, expired, 30)
    with state.db.session() as s:
        s.execute(update(Prediction).where(Prediction.id == expired).values(lease_until=old))
    Sweeper(state).beat_and_sweep()
    assert sorted(queued_prediction_ids(state.settings)) == sorted([queued_long_ago, expired])
    assert client.get("/readyz").json()["checks"]["model"] == "ok"  # the heartbeat counts


def expire(state: tasks.WorkerState, pid: str) -> None:
    with state.db.session() as s:
        s.execute(
            update(Prediction)
            .where(Prediction.id == pid)
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )


def test_stale_claim_can_neither_renew_nor_finish(world) -> None:
    """A paused worker whose job was taken over cannot extend it or overwrite the new result."""
    state, client = world
    pid = job(state)
    stale = jobs.claim(state.db, pid, 30)
    assert stale is not None and jobs.renew(state.db, stale, 30)  # its own lease: renewable
    expire(state, pid)
    owner = jobs.claim(state.db, pid, 30)
    assert owner is not None and owner.attempts == stale.attempts + 1
    assert not jobs.renew(state.db, stale, 30)
    assert not jobs.finish_done(state.db, stale, label="PNEUMONIA", probability=0.9)
    assert not jobs.finish_failed(state.db, stale, "late")
    assert client.get(f"/v1/predictions/{pid}").json()["status"] == "running"
    assert jobs.renew(state.db, owner, 30)
    assert jobs.finish_done(state.db, owner, label="NORMAL", probability=0.1)
    body = client.get(f"/v1/predictions/{pid}").json()
    assert body["status"] == "done" and body["result"]["label"] == "NORMAL"


def test_job_hung_past_its_timeout_is_failed_and_the_worker_exits(world) -> None:
    state, client = world
    state.settings = state.settings.model_copy(update={"job_timeout_seconds": 5.0})
    hung, fine = job(state, b"hung"), job(state, b"fine")
    exits: list[bool] = []
    sweeper = Sweeper(state, on_hung=lambda: exits.append(True))
    c_hung, c_fine = jobs.claim(state.db, hung, 30), jobs.claim(state.db, fine, 30)
    assert c_hung and c_fine
    now = time.monotonic()
    state.current = {hung: (c_hung, now - 6.0), fine: (c_fine, now)}
    sweeper.renew_leases()
    assert exits == [True]
    body = client.get(f"/v1/predictions/{hung}").json()
    assert body["status"] == "failed" and "JOB_TIMEOUT_SECONDS" in body["error"]
    assert client.get(f"/v1/predictions/{fine}").json()["status"] == "running"
    # the hung thread, should it ever return, cannot overwrite the verdict
    assert not jobs.finish_done(state.db, c_hung, label="NORMAL", probability=0.1)


def test_running_job_past_its_lease_is_redone_by_another_worker(world) -> None:
    """A worker that stopped renewing (SIGSTOP, cut off): the job is re-sent and redone."""
    state, client = world
    pid = job(state)
    stale = jobs.claim(state.db, pid, 30)
    expire(state, pid)
    Sweeper(state).beat_and_sweep()
    assert pid in queued_prediction_ids(state.settings)
    assert tasks.process(state, pid) == "done"
    assert not jobs.finish_failed(state.db, stale, "the old worker woke up")
    assert client.get(f"/v1/predictions/{pid}").json()["status"] == "done"


def test_sweeper_purges_on_schedule_when_retention_is_set(world) -> None:
    state, client = world
    old, new = job(state, b"old"), job(state, b"new")
    assert tasks.process(state, old) == "done" and tasks.process(state, new) == "done"
    with state.db.session() as s:
        old_upload = s.get(Prediction, old).upload_id
        s.execute(
            update(Upload)
            .where(Upload.id == old_upload)
            .values(created_at=utcnow() - timedelta(days=10))
        )
    Sweeper(state).beat_and_sweep()  # RETENTION_DAYS unset: nothing is purged
    assert client.get(f"/v1/predictions/{old}").status_code == 200
    state.settings = state.settings.model_copy(update={"retention_days": 7.0})
    Sweeper(state).beat_and_sweep()
    assert client.get(f"/v1/predictions/{old}").status_code == 404
    assert client.get(f"/v1/predictions/{new}").json()["status"] == "done"
    assert not state.storage.exists(hashlib.sha256(b"old").hexdigest())
    assert state.storage.exists(hashlib.sha256(b"new").hexdigest())
