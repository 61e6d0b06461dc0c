"""Apply Alembic migrations (``python -m service migrate``); no alembic.ini needed."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from service.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(settings: Settings, revision: str = "head") -> None:
    """Bring the database to ``revision``; creates the SQLite file's directory if needed."""
    if settings.db_url.startswith("sqlite"):
        settings.ensure_dirs()
    command.upgrade(alembic_config(settings.db_url), revision)
