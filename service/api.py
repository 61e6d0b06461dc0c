"""The FastAPI app factory: routers, error handlers, metrics, CORS. No model, no TensorFlow here.

``create_app(settings)`` builds everything from one Settings object; tests
pass a fake publisher to run in-process without a broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import errors
from service.context import AppContext
from service.db import Database
from service.metrics import Metrics
from service.queue import Publisher, create_celery
from service.routers import health, predictions, uploads
from service.settings import Settings
from service.storage import LocalStorage, Storage

# Multipart framing on top of the file itself; bodies larger than limit+this are refused unread.
MULTIPART_SLACK = 64 * 1024


def create_app(
    settings: Settings | None = None,
    publisher: Publisher | None = None,
    storage: Storage | None = None,
) -> FastAPI:
    settings = settings or Settings()
    db = Database(settings.db_url)
    if storage is None:
        settings.storage_root.mkdir(parents=True, exist_ok=True)
        storage = LocalStorage(settings.storage_root)
    publisher = publisher or Publisher(create_celery(settings))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        db.dispose()

    app = FastAPI(
        title="pneumoscope", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan,
        # Counted while the body streams in (chunked too): reading stops at the limit -> 413.
        max_body_size=settings.max_upload_bytes + MULTIPART_SLACK,
        form_limits={"max_files": settings.max_form_files,
                     "max_fields": settings.max_form_fields},
    )  # fmt: skip
    app.state.ctx = AppContext(settings=settings, db=db, storage=storage, publisher=publisher)
    app.state.metrics = Metrics(db, settings.metrics_cache_seconds)
    errors.install(app)

    app.middleware("http")(app.state.metrics.middleware)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["X-API-Key", "Content-Type"],
        )
    app.include_router(health.router)
    app.include_router(predictions.router)
    app.include_router(uploads.router)
    _include_ui(app)

    return app


def _include_ui(app: FastAPI) -> None:
    """The browser pages (/ and /review) live in service/ui.py, written separately."""
    try:
        from service import ui
    except ImportError:
        return
    router = getattr(ui, "router", None)
    if router is not None:
        app.include_router(router)
