"""The service's one typed configuration object, read from environment variables.

Every process (API, worker, migrate, feedback export) builds one
:class:`Settings` and passes it down, so no module reads ``os.environ``
itself. Defaults give the embedded mode: SQLite database, SQLite-backed
Celery broker, local storage, all under ``DATA_DIR``; no servers needed.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from study.serving import GATE_DIR_NAME, MAX_PIXELS, newest_winner

REPO = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Environment variables (case-insensitive) -> typed settings. See each field's doc."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", env_file=None)

    data_dir: Path = Field(
        default=REPO / "data" / "service",
        description="DATA_DIR: where the embedded mode keeps its SQLite files and uploads.",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "DATABASE_URL: SQLAlchemy URL. Default sqlite:///DATA_DIR/service.db; "
            "postgresql+psycopg://user@host:port/db for many workers."
        ),
    )
    broker_url: str | None = Field(
        default=None,
        description=(
            "BROKER_URL: Celery broker. Default sqla+sqlite:///DATA_DIR/broker.db "
            "(no server); redis://host:port/0 in production."
        ),
    )
    result_backend: str | None = Field(
        default=None,
        description="RESULT_BACKEND: unused by default; results live in DATABASE_URL.",
    )
    model_path: Path | None = Field(
        default=None,
        description="MODEL_PATH: a winner SavedModel dir; default the newest results/*/winner.",
    )
    gate_dir: Path | None = Field(
        default=None,
        description=(
            "GATE_DIR: the fitted input gate folder; default the gate/ folder beside the "
            "winner (results/<study>/gate, written by 'run_study.py gate fit')."
        ),
    )
    results_dir: Path = Field(
        default=REPO / "results",
        description="RESULTS_DIR: where to look for the newest winner when MODEL_PATH is unset.",
    )
    storage_dir: Path | None = Field(
        default=None, description="STORAGE_DIR: local blob store; default DATA_DIR/storage."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description=(
            "API_KEY: required in X-API-Key for label writes and the reviewer listing. "
            "Unset = those endpoints refuse everyone. Never logged."
        ),
    )
    max_upload_bytes: int = Field(
        default=30 * 1024 * 1024,
        description=(
            "MAX_UPLOAD_BYTES: the one byte limit: larger uploads get 413 before any decoding, "
            "and the gate refuses them as too_large."
        ),
    )
    max_pixels: int = Field(
        default=MAX_PIXELS,
        description=(
            "MAX_PIXELS: larger declared width*height is refused (decompression bombs); "
            "default the study decoder's own limit."
        ),
    )
    gate_check_quality: bool = Field(
        default=True,
        description="GATE_CHECK_QUALITY: false skips the gate's quality layer (blur, exposure).",
    )
    cors_origins: str = Field(
        default="",
        description="CORS_ORIGINS: comma-separated allowed origins; empty = no CORS (closed).",
    )
    host: str = Field(default="127.0.0.1", description="HOST: the API's bind address.")
    port: int = Field(default=8000, description="PORT: the API's port.")
    log_level: str = Field(default="info", description="LOG_LEVEL: uvicorn/celery log level.")

    lease_seconds: float = Field(
        default=60.0,
        description=(
            "LEASE_SECONDS: a running job whose worker stopped renewing its lease this long "
            "ago is taken over by another worker (worker killed -> job redone)."
        ),
    )
    sweep_interval_seconds: float = Field(
        default=15.0,
        description="SWEEP_INTERVAL_SECONDS: how often a worker heartbeats and re-sends lost jobs.",
    )
    requeue_after_seconds: float = Field(
        default=300.0,
        description=(
            "REQUEUE_AFTER_SECONDS: a job still queued this long after it was sent is sent "
            "again (a broker that lost messages loses no jobs)."
        ),
    )
    max_attempts: int = Field(
        default=3, description="MAX_ATTEMPTS: a job that kills its worker this often fails."
    )
    worker_ttl_seconds: float = Field(
        default=90.0,
        description="WORKER_TTL_SECONDS: /readyz wants a worker heartbeat (model loaded) this new.",
    )
    broker_visibility_timeout: float = Field(
        default=3600.0,
        description="BROKER_VISIBILITY_TIMEOUT: Redis redelivers unacked messages after this.",
    )
    task_delay_seconds: float = Field(
        default=0.0,
        description="TASK_DELAY_SECONDS: test-only sleep in each job, to kill a worker mid-task.",
    )

    # --- load, failure and retention (issue #13: backpressure, leases, purge) ---
    max_queue_depth: int = Field(
        default=500,
        description=(
            "MAX_QUEUE_DEPTH: with this many jobs queued or running, new uploads get 503 + "
            "Retry-After and nothing is stored; 0 = no limit."
        ),
    )
    retry_after_seconds: int = Field(
        default=10, description="RETRY_AFTER_SECONDS: the Retry-After sent with a full-queue 503."
    )
    rate_limit: str | None = Field(
        default=None,
        description=(
            "RATE_LIMIT: per-client upload limit in the `limits` notation, e.g. '30/minute' "
            "(429 + Retry-After past it); unset = no limit."
        ),
    )
    rate_limit_storage: str = Field(
        default="memory://",
        description=(
            "RATE_LIMIT_STORAGE: where rate-limit counters live; memory:// counts per API "
            "process, redis://host:port/1 shares them between API processes."
        ),
    )
    metrics_cache_seconds: float = Field(
        default=30.0,
        description=(
            "METRICS_CACHE_SECONDS: /metrics recomputes its whole-table totals at most this "
            "often (queue depth is always fresh)."
        ),
    )
    job_timeout_seconds: float = Field(
        default=600.0,
        description=(
            "JOB_TIMEOUT_SECONDS: a job running this long is failed and its (hung) worker "
            "process exits, so its supervisor starts a fresh one."
        ),
    )
    retention_days: float | None = Field(
        default=None,
        description=(
            "RETENTION_DAYS: workers purge unlabelled uploads older than this automatically "
            "(as `python -m service purge --older-than DAYS`); unset = never."
        ),
    )
    purge_interval_seconds: float = Field(
        default=3600.0, description="PURGE_INTERVAL_SECONDS: how often the automatic purge runs."
    )

    # --- privacy and per-request bounds (issue 13, first half) ---
    store_client_filenames: bool = Field(
        default=False,
        description=(
            "STORE_CLIENT_FILENAMES: keep the client's file name (sanitised) with each upload. "
            "Off by default: file names are often a patient's name (see README: privacy)."
        ),
    )
    max_concurrent_uploads: int = Field(
        default=4,
        description=(
            "MAX_CONCURRENT_UPLOADS: uploads read, checked and de-identified at once in the API; "
            "more wait. The API's memory is about this many times one request's (README)."
        ),
    )
    max_form_files: int = Field(
        default=1, description="MAX_FORM_FILES: most file parts in one multipart upload."
    )
    max_form_fields: int = Field(
        default=4, description="MAX_FORM_FIELDS: most non-file parts in one multipart upload."
    )

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, v: str | None) -> str | None:
        """A malformed RATE_LIMIT fails at start-up, not as a 500 on the first upload."""
        if v:
            from limits import parse

            parse(v)
        return v or None

    @cached_property
    def db_url(self) -> str:
        """DATABASE_URL, or the embedded SQLite file."""
        return self.database_url or f"sqlite:///{self.data_dir / 'service.db'}"

    @cached_property
    def broker(self) -> str:
        """BROKER_URL, or Celery's SQLAlchemy transport over a SQLite file."""
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @cached_property
    def storage_root(self) -> Path:
        return self.storage_dir or self.data_dir / "storage"

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def resolve_model_path(self) -> Path | None:
        """MODEL_PATH, else the newest results/*/winner (None when there is none)."""
        if self.model_path is not None:
            return self.model_path
        return newest_winner(self.results_dir)

    def resolve_gate_dir(self) -> Path | None:
        """GATE_DIR, else <study>/gate beside the winner (None when there is no winner)."""
        if self.gate_dir is not None:
            return self.gate_dir
        model = self.resolve_model_path()
        return None if model is None else Path(model).parent / GATE_DIR_NAME

    def ensure_dirs(self) -> None:
        """Create DATA_DIR and the storage dir (only the embedded defaults need them)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage_root.mkdir(parents=True, exist_ok=True)
