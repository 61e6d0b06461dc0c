"""Initial schema: uploads, predictions, labels, worker heartbeats.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    _uploads()
    _predictions()
    _labels_and_heartbeats()


def _uploads() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("original_name", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("storage_key", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("bit_depth", sa.Integer),
        sa.Column("modality", sa.String(16)),
        sa.Column("body_part_examined", sa.String(64)),
        sa.Column("view_position", sa.String(16)),
        sa.Column("photometric_interpretation", sa.String(32)),
    )
    op.create_index("ix_uploads_created_at", "uploads", ["created_at"])


def _predictions() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("upload_id", sa.String(32), sa.ForeignKey("uploads.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("label", sa.String(16)),
        sa.Column("probability", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("model_name", sa.String(128)),
        sa.Column("model_version", sa.String(64)),
        sa.Column("heatmap_key", sa.String(128)),
        sa.Column("error", sa.Text),
        sa.Column("rejection", sa.JSON),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("enqueued_at", TS),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("lease_until", TS),
        sa.Column("gate_ms", sa.Float),
        sa.Column("inference_ms", sa.Float),
        sa.Column("heatmap_ms", sa.Float),
        sa.Column("total_ms", sa.Float),
    )
    op.create_index("ix_predictions_upload_id", "predictions", ["upload_id"])
    op.create_index("ix_predictions_status", "predictions", ["status"])


def _labels_and_heartbeats() -> None:
    op.create_table(
        "labels",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "upload_id", sa.String(32), sa.ForeignKey("uploads.id"), nullable=False, unique=True
        ),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "worker_heartbeats",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("model_name", sa.String(128)),
        sa.Column("model_version", sa.String(64)),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("beat_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worker_heartbeats")
    op.drop_table("labels")
    op.drop_index("ix_predictions_status", "predictions")
    op.drop_index("ix_predictions_upload_id", "predictions")
    op.drop_table("predictions")
    op.drop_index("ix_uploads_created_at", "uploads")
    op.drop_table("uploads")
