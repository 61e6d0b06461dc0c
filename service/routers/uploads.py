"""Reviewer endpoints: record a reviewed label, list uploads (newest first), count reviews.

All need X-API-Key: label writes change training data, and the listing
shows every user's uploads.
"""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy import func, select

from service.context import ApiKey, Ctx, get_or_404
from service.errors import ApiError
from service.models import Label, Prediction, Upload, utcnow
from service.preview import preview_png
from service.schemas import LabelIn, LabelOut, UploadList, UploadStats, upload_out

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], dependencies=[ApiKey])


@router.put("/{upload_id}/label", response_model=LabelOut)
def put_label(ctx: Ctx, upload_id: str, body: LabelIn) -> LabelOut:
    get_or_404(ctx, Upload, upload_id, "upload")
    with ctx.db.session() as s:
        row = s.execute(select(Label).where(Label.upload_id == upload_id)).scalar_one_or_none()
        now = utcnow()
        if row is None:
            row = Label(upload_id=upload_id, label=body.label, created_at=now, updated_at=now)
            s.add(row)
        else:
            row.label, row.updated_at = body.label, now
    return LabelOut(upload_id=upload_id, label=body.label, updated_at=now)


def _counts(s) -> tuple[int, dict[str, int]]:
    total = s.execute(select(func.count()).select_from(Upload)).scalar_one()
    by = dict(s.execute(select(Label.label, func.count()).group_by(Label.label)).all())
    return int(total), {k: int(v) for k, v in by.items()}


@router.get("/stats", response_model=UploadStats)
def stats(ctx: Ctx) -> UploadStats:
    with ctx.db.session() as s:
        total, by = _counts(s)
    reviewed = sum(by.values())
    return UploadStats(total=total, reviewed=reviewed, unlabelled=total - reviewed, by_label=by)


@router.get("", response_model=UploadList)
def list_uploads(
    ctx: Ctx,
    unlabelled: bool = False,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> UploadList:
    """Newest first, each with its reviewed label and the model's latest answer."""
    with ctx.db.session() as s:
        q = select(Upload, Label.label).outerjoin(Label, Label.upload_id == Upload.id)
        if unlabelled:
            q = q.where(Label.id.is_(None))
        rows = s.execute(
            q.order_by(Upload.created_at.desc(), Upload.id).limit(limit).offset(offset)
        ).all()
        ids = [u.id for u, _ in rows]
        latest: dict[str, Prediction] = {}
        if ids:
            preds = s.execute(
                select(Prediction)
                .where(Prediction.upload_id.in_(ids))
                .order_by(Prediction.created_at.desc())
            ).scalars()
            for p in preds:
                latest.setdefault(p.upload_id, p)
        total, by = _counts(s)
    reviewed = sum(by.values())
    return UploadList(
        items=[upload_out(u, lab, latest.get(u.id)) for u, lab in rows],
        total=total,
        reviewed=reviewed,
        unlabelled=total - reviewed,
    )


@router.get("/{upload_id}/image.png", response_class=Response)
def get_image(ctx: Ctx, upload_id: str) -> Response:
    """The upload as a grey PNG preview (DICOMs included), for the reviewer page."""
    up = get_or_404(ctx, Upload, upload_id, "upload")
    png = preview_png(ctx.storage.get(up.storage_key), ctx.settings.max_pixels)
    if png is None:
        raise ApiError(422, "not_an_image", "this upload cannot be shown as an image")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
