"""Retention (purge), the feedback export's rules for gate-rejected uploads, and /metrics cost."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select, update

from service.__main__ import main as service_main
from service.api import create_app
from service.db import Database
from service.feedback import export_feedback
from service.intake import create_job
from service.models import JobStatus, Label, Prediction, Upload, utcnow
from service.retention import purge
from service.storage import LocalStorage
from tests.service_support import make_settings


def png(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


class World:
    def __init__(self, tmp: Path) -> None:
        self.settings = make_settings(tmp)
        self.db = Database(self.settings.db_url)
        self.storage = LocalStorage(self.settings.storage_root)

    def upload(self, seed: int, age_days: float, status: str = JobStatus.DONE) -> str:
        """An upload of this age whose one job ended in ``status`` (with a heatmap if done)."""
        uid, pid = create_job(self.db, self.storage, png(seed), "x.png", "png")
        when = utcnow() - timedelta(days=age_days)
        heat = self.storage.put(png(10_000 + seed)) if status == JobStatus.DONE else None
        with self.db.session() as s:
            s.execute(update(Upload).where(Upload.id == uid).values(created_at=when))
            s.execute(
                update(Prediction)
                .where(Prediction.id == pid)
                .values(status=status, heatmap_key=heat, finished_at=when)
            )
        return uid

    def label(self, uid: str, label: str = "NORMAL", exported: timedelta | None = None) -> None:
        now = utcnow()
        with self.db.session() as s:
            s.add(
                Label(
                    upload_id=uid, label=label, created_at=now, updated_at=now,
                    exported_at=None if exported is None else now + exported,
                )
            )  # fmt: skip

    def uploads(self) -> set[str]:
        with self.db.session() as s:
            return set(s.execute(select(Upload.id)).scalars())

    def files(self) -> int:
        return sum(1 for p in self.settings.storage_root.rglob("*") if p.is_file())


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.db.dispose()


def test_purge_deletes_exactly_old_unlabelled_uploads_and_their_files(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_unlabelled = world.upload(1, 10)
    old_rejected = world.upload(2, 10, JobStatus.REJECTED)
    old_labelled = world.upload(3, 10)
    world.label(old_labelled)  # never exported: kept
    old_exported = world.upload(4, 10)
    world.label(old_exported, exported=timedelta(seconds=1))  # exported: may go
    relabelled = world.upload(5, 10)
    world.label(relabelled, exported=timedelta(seconds=-60))  # changed since export: kept
    young = world.upload(6, 2)
    old_running = world.upload(7, 10, JobStatus.RUNNING)
    before = world.files()
    assert before == 7 + 5  # 7 uploads, 5 heatmaps (the done ones)
    for k, v in {"DATA_DIR": str(world.settings.data_dir), "API_KEY": "x"}.items():
        monkeypatch.setenv(k, v)
    for k in ("DATABASE_URL", "STORAGE_DIR"):
        monkeypatch.delenv(k, raising=False)
    assert service_main(["purge", "--older-than", "7"]) == 0
    kept = {old_labelled, relabelled, young, old_running}
    assert world.uploads() == kept
    assert not world.uploads() & {old_unlabelled, old_rejected, old_exported}
    with world.db.session() as s:
        left = set(s.execute(select(Prediction.upload_id)).scalars())
        labels = set(s.execute(select(Label.upload_id)).scalars())
    assert left == kept and labels == {old_labelled, relabelled}
    assert world.files() == before - 3 - 2  # their 3 uploads and the 2 heatmaps of done jobs
    assert purge(world.db, world.storage, 7).uploads == 0  # idempotent
    assert purge(world.db, world.storage, 1).uploads == 1  # the young one, once older
    assert world.uploads() == kept - {young}


def test_export_counts_gate_rejected_and_marks_exported(world: World, tmp_path: Path) -> None:
    rejected_labelled = world.upload(1, 1, JobStatus.REJECTED)
    world.label(rejected_labelled, "PNEUMONIA")
    world.upload(2, 1, JobStatus.REJECTED)  # no reviewer label: never exported
    done_labelled = world.upload(3, 1)
    world.label(done_labelled, "NORMAL")
    out = tmp_path / "fb"
    counts = export_feedback(world.settings.db_url, world.storage, out)
    assert counts == {"NORMAL": 1, "PNEUMONIA": 1, "skipped": 0, "gate_rejected": 1}
    assert len(list(out.rglob("*.png"))) == 2
    with world.db.session() as s:
        assert all(s.execute(select(Label.exported_at)).scalars())
    # exported labels no longer hold their uploads back from retention
    assert purge(world.db, world.storage, 0).uploads == 3


def test_metrics_scans_the_table_once_per_cache_interval(world: World) -> None:
    s = world.settings.model_copy(update={"metrics_cache_seconds": 3600.0})
    world.upload(1, 0)
    statements: list[str] = []
    with TestClient(create_app(s)) as client:
        engine = client.app.state.ctx.db.engine
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        for _ in range(5):
            text = client.get("/metrics").text
        assert 'pneumoscope_predictions{label="",status="queued"} 0.0' in text
        create_job(world.db, world.storage, png(50), "y.png", "png")  # one more queued job
        text = client.get("/metrics").text
    full = [q for q in statements if "GROUP BY predictions.status, predictions.label" in q]
    assert len(full) == 1, full  # the whole-table aggregate ran once for 6 scrapes
    assert 'pneumoscope_queue_depth{state="queued"} 1.0' in text  # depth is always fresh
    assert 'pneumoscope_predictions{label="",status="queued"} 1.0' in text


def test_purge_without_a_database_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "missing"))
    for k in ("DATABASE_URL", "STORAGE_DIR"):
        monkeypatch.delenv(k, raising=False)
    assert service_main(["purge", "--older-than", "1"]) == 2
    err = capsys.readouterr().err
    assert "database unreachable or not migrated" in err and "Traceback" not in err
