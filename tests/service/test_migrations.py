"""Alembic migrations match the models, and go down and up again."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service.migrate import alembic_config, migrate
from service.models import Base
from service.settings import Settings


def test_migrations_match_models_and_round_trip(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, database_url=None)
    migrate(s)
    engine = create_engine(s.db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
    command.downgrade(alembic_config(s.db_url), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(s)
    tables = set(inspect(engine).get_table_names())
    assert {"uploads", "predictions", "labels", "worker_heartbeats"} <= tables
    engine.dispose()
