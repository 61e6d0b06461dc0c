"""Response and request bodies: the API's public contract, in one place."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from service.models import JobStatus, Prediction, Upload

LabelName = Literal["NORMAL", "PNEUMONIA"]
#: The model's answer: a class, or UNCERTAIN when the probability is inside the winner's
#: refer band (the X-ray should go to a radiologist). Reviewers still label NORMAL/PNEUMONIA.
ResultLabel = Literal["NORMAL", "PNEUMONIA", "UNCERTAIN"]


class Accepted(BaseModel):
    id: str
    status: JobStatus
    status_url: str
    upload_id: str


class ModelRef(BaseModel):
    name: str | None
    version: str | None


class Result(BaseModel):
    label: ResultLabel
    probability_pneumonia: float
    threshold: float | None
    model: ModelRef
    heatmap_url: str | None


class Rejection(BaseModel):
    code: str | None
    message: str
    checks: dict[str, Any]


class PredictionOut(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    finished_at: datetime | None
    upload_id: str
    result: Result | None
    rejection: Rejection | None
    error: str | None = None


class LabelIn(BaseModel):
    label: LabelName


class LabelOut(BaseModel):
    upload_id: str
    label: LabelName
    updated_at: datetime


class UploadOut(BaseModel):
    id: str
    sha256: str
    original_name: str
    content_type: str
    size_bytes: int
    created_at: datetime
    width: int | None
    height: int | None
    bit_depth: int | None
    modality: str | None
    body_part_examined: str | None
    view_position: str | None
    photometric_interpretation: str | None
    reviewed_label: LabelName | None
    prediction: PredictionOut | None


class UploadList(BaseModel):
    items: list[UploadOut]
    total: int
    reviewed: int
    unlabelled: int


class UploadStats(BaseModel):
    total: int
    reviewed: int
    unlabelled: int
    by_label: dict[str, int]


def status_url(prediction_id: str) -> str:
    return f"/v1/predictions/{prediction_id}"


def prediction_out(p: Prediction) -> PredictionOut:
    result = None
    if p.status == JobStatus.DONE and p.label is not None and p.probability is not None:
        result = Result(
            label=p.label,
            probability_pneumonia=p.probability,
            threshold=p.threshold,
            model=ModelRef(name=p.model_name, version=p.model_version),
            heatmap_url=f"{status_url(p.id)}/heatmap.png" if p.heatmap_key else None,
        )
    rejection = None
    if p.status == JobStatus.REJECTED and p.rejection is not None:
        rj = p.rejection
        rejection = Rejection(
            code=rj.get("code"), message=str(rj.get("message", "")), checks=rj.get("checks") or {}
        )
    return PredictionOut(
        id=p.id,
        status=JobStatus(p.status),
        created_at=p.created_at,
        finished_at=p.finished_at,
        upload_id=p.upload_id,
        result=result,
        rejection=rejection,
        error=p.error if p.status == JobStatus.FAILED else None,
    )


def upload_out(u: Upload, label: str | None, latest: Prediction | None) -> UploadOut:
    return UploadOut(
        id=u.id,
        sha256=u.sha256,
        original_name=u.original_name,
        content_type=u.content_type,
        size_bytes=u.size_bytes,
        created_at=u.created_at,
        width=u.width,
        height=u.height,
        bit_depth=u.bit_depth,
        modality=u.modality,
        body_part_examined=u.body_part_examined,
        view_position=u.view_position,
        photometric_interpretation=u.photometric_interpretation,
        reviewed_label=label,  # type: ignore[arg-type]
        prediction=prediction_out(latest) if latest is not None else None,
    )
