"""Backpressure: a full queue answers 503 + Retry-After, a client over its rate limit 429 +
Retry-After, and a refused upload leaves no row and no file. In-process, then on the real
stacks (SQLite; PostgreSQL + Redis) with the worker paused by SIGSTOP."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from tests.service_support import (
    API_KEY,
    Stack,
    make_publisher,
    make_settings,
    stop_process,
    wait_for,
)

KEY = {"X-API-Key": API_KEY}


def png(seed: int) -> bytes:
    img = cv2.GaussianBlur(
        np.random.default_rng(seed).integers(0, 256, (128, 128), dtype=np.uint8), (5, 5), 0
    )
    return cv2.imencode(".png", img)[1].tobytes()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def stored_shas(get) -> set[str]:  # type: ignore[no-untyped-def]
    body = get("/v1/uploads?limit=500", headers=KEY).json()
    return {u["sha256"] for u in body["items"]}


def assert_refused(r, status: int, code: str, max_wait: int) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert 1 <= int(r.headers["Retry-After"]) <= max_wait


def test_full_queue_and_rate_limit_refuse_before_storing(tmp_path: Path) -> None:
    s = make_settings(tmp_path, max_queue_depth=2, rate_limit="4/minute", retry_after_seconds=7)
    pub = make_publisher(s)  # no worker: accepted jobs stay queued
    with TestClient(create_app(s, pub)) as c:
        post = lambda seed: c.post("/v1/predictions", files={"file": ("a.png", png(seed))})  # noqa: E731
        assert post(1).status_code == 202 and post(2).status_code == 202
        files = files_under(s.storage_root)
        assert_refused(post(3), 503, "queue_full", 7)  # 2 queued: the limit
        assert_refused(post(4), 503, "queue_full", 7)
        assert_refused(post(5), 429, "rate_limited", 60)  # the 5th request in a minute
        assert files_under(s.storage_root) == files
        shas = stored_shas(c.get)
        assert shas == {hashlib.sha256(png(i)).hexdigest() for i in (1, 2)}
        metrics = c.get("/metrics").text
        assert 'pneumoscope_uploads_total{outcome="queue_full"} 2.0' in metrics
        assert 'pneumoscope_uploads_total{outcome="rate_limited"} 1.0' in metrics
    pub.app.close()


@contextmanager
def api_with(stack: Stack, extra: dict[str, str]) -> Iterator[None]:
    """The stack's API restarted with extra settings; restarted as it was afterwards."""

    def restart(env: dict[str, str]) -> None:
        stop_process(stack.api)
        stack.api = stack._spawn("api", env)
        wait_for(lambda: stack.client.get("/healthz").status_code == 200, 60, "the API")

    restart(extra)
    try:
        yield
    finally:
        restart({})


def _sqlite_locked(path: Path) -> bool:
    """Whether another process holds a lock that a write to this SQLite file would wait on."""
    if not path.exists():
        return False
    with closing(sqlite3.connect(path, timeout=0.05)) as conn:
        try:
            conn.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError:
            return True
        conn.rollback()
    return False


@contextmanager
def worker_paused(stack: Stack) -> Iterator[None]:
    """SIGSTOP the worker, but never inside one of its SQLite transactions (the embedded
    database and broker): a frozen lock holder would stall the API, not the queue."""
    assert stack.worker is not None
    files = [stack.workdir / "data" / name for name in ("service.db", "broker.db")]
    for _ in range(200):
        stack.worker.send_signal(signal.SIGSTOP)
        if not any(_sqlite_locked(f) for f in files):
            break
        stack.worker.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    else:
        raise AssertionError("the worker always held a SQLite lock: cannot pause it cleanly")
    try:
        yield
    finally:
        stack.worker.send_signal(signal.SIGCONT)


def _stored_sha(data: bytes, fmt: str) -> str:
    from service.intake import stored_bytes
    from service.settings import Settings

    return hashlib.sha256(stored_bytes(data, fmt, Settings().max_pixels)).hexdigest()


def queue_empty(stack: Stack) -> bool:
    text = stack.client.get("/metrics").text
    return all(f'pneumoscope_queue_depth{{state="{s}"}} 0.0' in text for s in ("queued", "running"))


@pytest.mark.services
def test_real_stack_backpressure_with_paused_worker(
    stack: Stack, full_res_jpegs: list[Path]
) -> None:
    wait_for(lambda: queue_empty(stack), 180, "an idle queue before the test")
    storage = stack.workdir / "data" / "storage"
    accepted: list[str] = []
    env = {"MAX_QUEUE_DEPTH": "3", "RATE_LIMIT": "5/minute", "RETRY_AFTER_SECONDS": "4"}
    with api_with(stack, env), worker_paused(stack):
        before_shas = stored_shas(stack.client.get)
        for path in full_res_jpegs[:3]:
            r = stack.upload(path.read_bytes())
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
        files = files_under(storage)
        refused = [png(100 + i) for i in range(3)]
        assert_refused(stack.upload(refused[0], "r.png", "image/png"), 503, "queue_full", 4)
        assert_refused(stack.upload(refused[1], "r.png", "image/png"), 503, "queue_full", 4)
        assert_refused(stack.upload(refused[2], "r.png", "image/png"), 429, "rate_limited", 60)
        assert files_under(storage) == files  # no file written for a refused upload
        shas = stored_shas(stack.client.get)
        # Rows hold the hash of the stored (metadata-free) bytes, as intake computes it.
        refused_shas = {_stored_sha(b, "png") for b in refused}
        assert len(refused_shas) == 3 and not shas & refused_shas  # and no row
        assert shas - before_shas <= {_stored_sha(p.read_bytes(), "jpeg")
                                      for p in full_res_jpegs[:3]}  # fmt: skip
    for pid in accepted:  # resumed: every accepted job finishes
        done = stack.wait_status(pid, ("done", "rejected", "failed"))
        assert done["status"] in ("done", "rejected"), done
