"""Liveness, readiness (database, broker, model) and Prometheus metrics."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select, text

from service.context import Ctx
from service.embedded import beat_name
from service.models import WorkerBeat, utcnow

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process answers; says nothing about its dependencies (that is /readyz)."""
    return {"status": "ok"}


def _check_db(ctx: Ctx) -> str | None:
    try:
        with ctx.db.session() as s:
            s.execute(text("SELECT 1"))
            s.execute(text("SELECT version_num FROM alembic_version")).all()
        return None
    except Exception as exc:
        return f"database unreachable or not migrated ({type(exc).__name__})"


def live_workers(ctx: Ctx) -> int:
    """Workers whose heartbeat (sent only once the model is loaded) is fresher than the TTL."""
    fresh = utcnow() - timedelta(seconds=ctx.settings.worker_ttl_seconds)
    with ctx.db.session() as s:
        return int(
            s.execute(
                select(func.count()).select_from(WorkerBeat).where(WorkerBeat.beat_at >= fresh)
            ).scalar_one()
        )


def _check_embedded(ctx: Ctx, request: Request) -> str | None:
    """Embedded mode only: its own worker child is running and has loaded its model."""
    sup = getattr(request.app.state, "worker_supervisor", None)
    if sup is None:
        return None
    problem = sup.problem()
    if problem is not None:
        return problem
    fresh = utcnow() - timedelta(seconds=ctx.settings.worker_ttl_seconds)
    with ctx.db.session() as s:
        beat = s.execute(
            select(WorkerBeat.name).where(
                WorkerBeat.name == beat_name(sup.pid()), WorkerBeat.beat_at >= fresh
            )
        ).first()
    return None if beat else "embedded worker is starting (loading its model)"


def _check_model(ctx: Ctx) -> tuple[str | None, int]:
    try:
        n = live_workers(ctx)
        return (None if n else "no worker has reported a loaded model recently"), n
    except Exception as exc:
        return f"cannot read worker heartbeats ({type(exc).__name__})", 0


@router.get("/readyz")
def readyz(ctx: Ctx, request: Request) -> JSONResponse:
    problems = {"database": _check_db(ctx), "broker": ctx.publisher.ping()}
    workers = 0
    if problems["database"] is None:
        problems["model"], workers = _check_model(ctx)
        if getattr(request.app.state, "worker_supervisor", None) is not None:
            problems["worker"] = _check_embedded(ctx, request)
    else:
        problems["model"] = "unknown (no database)"
    checks = {k: (v or "ok") for k, v in problems.items()}
    failed = [k for k, v in problems.items() if v]
    if not failed:
        return JSONResponse({"status": "ready", "checks": checks, "workers": workers})
    body = {
        "status": "unavailable",
        "checks": checks,
        "workers": workers,
        "error": {"code": "not_ready", "message": "not ready: " + ", ".join(failed)},
    }
    return JSONResponse(body, status_code=503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    data = generate_latest(request.app.state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
