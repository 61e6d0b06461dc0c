"""POST /v1/predictions (cheap checks, then queue) and reading a prediction and its heatmap."""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from service import intake
from service.admission import Admit
from service.context import Ctx, get_or_404
from service.errors import ApiError
from service.gate import format_check
from service.models import JobStatus, Prediction
from service.queue import BrokerUnavailable
from service.schemas import Accepted, PredictionOut, prediction_out, status_url
from service.settings import Settings
from service.storage import StorageKeyError
from study.serving import ImageDecodeError

router = APIRouter(prefix="/v1/predictions", tags=["predictions"])
CHUNK = 1 << 20
_SLOTS_LOCK = threading.Lock()
# Gate codes that the request path may answer with, and their HTTP status.
FORMAT_STATUS = {
    "too_large": 413,
    "not_an_image": 415,
    "unsupported_format": 415,
    "burned_in_annotation": 422,
}


def read_limited(file: UploadFile, limit: int) -> bytes:
    """Read at most limit bytes; one more means too large (413), whatever the headers said."""
    buf = bytearray()
    while True:
        chunk = file.file.read(CHUNK)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, "too_large", f"file is over the {limit} byte limit")


def _intake_slots(request: Request, n: int) -> threading.BoundedSemaphore:
    """One semaphore per app: at most n uploads are held in memory and de-identified at
    once, so the API's memory is bounded by n x one request's (README: limits)."""
    state = request.app.state
    with _SLOTS_LOCK:
        if not hasattr(state, "intake_slots"):
            state.intake_slots = threading.BoundedSemaphore(n)
    return state.intake_slots


def _checked_and_deidentified(file: UploadFile, s: Settings, metrics: Any) -> tuple[bytes, str]:
    """The bytes to store and their format, from header checks only; ApiError otherwise."""
    data = read_limited(file, s.max_upload_bytes)
    check = format_check(data, s)
    if not check.accepted:
        metrics.uploads.labels(check.code or "refused").inc()
        status = FORMAT_STATUS.get(check.code or "", 422)
        raise ApiError(status, check.code or "invalid_image", check.message or "unreadable file")
    fmt = str(check.meta.get("format", "unknown"))
    try:
        return intake.stored_bytes(data, fmt, s.max_pixels), fmt
    except ImageDecodeError as exc:
        metrics.uploads.labels("not_an_image").inc()
        why = f"the {fmt.upper()} file cannot be stored without its identifiers: {exc}"
        raise ApiError(415, "not_an_image", why) from exc


def _load(ctx: Ctx, prediction_id: str) -> Prediction:
    return get_or_404(ctx, Prediction, prediction_id, "prediction")


@router.post("", status_code=202, response_model=Accepted, dependencies=[Admit])
def create_prediction(
    ctx: Ctx, request: Request, file: Annotated[UploadFile, File()]
) -> JSONResponse:
    """Header checks only (size, magic bytes, declared sizes, DICOM header fields), then
    de-identification; decoding, the gate and the model run in a worker."""
    metrics = request.app.state.metrics
    s = ctx.settings
    with _intake_slots(request, s.max_concurrent_uploads):
        stored, fmt = _checked_and_deidentified(file, s, metrics)
    name = intake.display_name(file.filename, s.store_client_filenames)
    upload_id, pred_id = intake.create_job(ctx.db, ctx.storage, stored, name, fmt)
    try:
        ctx.publisher.send(pred_id)
    except BrokerUnavailable as exc:
        intake.withdraw(ctx.db, pred_id)
        metrics.uploads.labels("broker_unavailable").inc()
        raise ApiError(
            503,
            "broker_unavailable",
            "the job queue is unavailable; nothing was queued, retry later",
            {"Retry-After": "5"},
        ) from exc
    from service.jobs import mark_enqueued

    mark_enqueued(ctx.db, pred_id)
    metrics.uploads.labels(JobStatus.QUEUED).inc()
    body = Accepted(
        id=pred_id, status=JobStatus.QUEUED, status_url=status_url(pred_id), upload_id=upload_id
    )
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": body.status_url})


@router.get("/{prediction_id}", response_model=PredictionOut)
def get_prediction(ctx: Ctx, prediction_id: str) -> PredictionOut:
    return prediction_out(_load(ctx, prediction_id))


@router.get("/{prediction_id}/heatmap.png", response_class=Response)
def get_heatmap(ctx: Ctx, prediction_id: str) -> Response:
    p = _load(ctx, prediction_id)
    if p.status != JobStatus.DONE or not p.heatmap_key:
        raise ApiError(404, "not_found", f"no heatmap for this prediction (status: {p.status})")
    try:
        png = ctx.storage.get(p.heatmap_key)
    except (FileNotFoundError, StorageKeyError) as exc:
        raise ApiError(404, "not_found", "heatmap missing from storage") from exc
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
