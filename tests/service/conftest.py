"""Service fixtures: a tiny winner, in-process apps (real SQLite broker), and real stacks."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.queue import Publisher
from service.settings import Settings
from tests.service_support import (
    Postgres,
    Redis,
    Stack,
    make_publisher,
    make_settings,
    make_tiny_winner,
    running_stack,
)


@pytest.fixture(scope="session")
def tiny_winner(tmp_path_factory: pytest.TempPathFactory, fitted_gate_dir: Path) -> Path:
    """The tiny winner with the session's fitted gate beside it, where workers look for it."""
    winner = make_tiny_winner(tmp_path_factory.mktemp("tiny_study"))
    shutil.copytree(fitted_gate_dir, winner.parent / "gate")
    return winner


@pytest.fixture(scope="session")
def full_res_jpegs(samples_dir: Path) -> list[Path]:
    files = sorted((samples_dir / "kermany_full_res" / "val" / "NORMAL").glob("*.jpeg"))
    if len(files) < 3:
        pytest.skip(f"LOUD SKIP: need 3 full-resolution JPEGs under {samples_dir}")
    return files


@pytest.fixture(scope="session")
def sample_jpeg(full_res_jpegs: list[Path]) -> bytes:
    return full_res_jpegs[0].read_bytes()


@pytest.fixture
def app_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def publisher(app_settings: Settings) -> Iterator[Publisher]:
    """The real Publisher over the embedded broker: a SQLite file in the test's tmp dir."""
    pub = make_publisher(app_settings)
    yield pub
    pub.app.close()


@pytest.fixture
def client(app_settings: Settings, publisher: Publisher) -> Iterator[TestClient]:
    from service.api import create_app

    with TestClient(create_app(app_settings, publisher), raise_server_exceptions=False) as c:
        yield c


# --------------------------------------------------------------------------- real stacks


def _log_dir(artifacts_dir: Path, backend: str) -> Path:
    """Service logs survive the run (artifacts/ is git-ignored and kept by CI)."""
    d = artifacts_dir / "service-logs" / backend
    shutil.rmtree(d, ignore_errors=True)
    return d


@pytest.fixture(scope="session")
def sqlite_stack(tiny_winner: Path, artifacts_dir: Path) -> Iterator[Stack]:
    """Embedded-mode backends: SQLite database + Celery's SQLite transport, real processes."""
    env = {"MODEL_PATH": str(tiny_winner)}
    with running_stack("pneumoscope-sqlite-", env, _log_dir(artifacts_dir, "sqlite")) as stack:
        yield stack


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    work = Path(tempfile.mkdtemp(prefix="pneumoscope-redis-"))
    redis = Redis(work)
    try:
        redis.start()
    except FileNotFoundError as exc:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(f"LOUD SKIP: {exc}")
    try:
        yield redis
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    pg = Postgres()
    try:
        pg.start()
    except FileNotFoundError as exc:
        pg.stop()
        pytest.skip(f"LOUD SKIP: {exc}")
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def pg_redis_stack(
    tiny_winner: Path, redis_server: Redis, postgres_server: Postgres, artifacts_dir: Path
) -> Iterator[Stack]:
    """Production backends: PostgreSQL + Redis, real processes."""
    env = {
        "MODEL_PATH": str(tiny_winner),
        "DATABASE_URL": postgres_server.url,
        "BROKER_URL": redis_server.url,
        "BROKER_VISIBILITY_TIMEOUT": "30",
    }
    with running_stack("pneumoscope-pgredis-", env, _log_dir(artifacts_dir, "pg_redis")) as stack:
        yield stack


@pytest.fixture(scope="session", params=["sqlite", "pg_redis"])
def stack(request: pytest.FixtureRequest) -> Stack:
    return request.getfixturevalue(f"{request.param}_stack")
