"""labels.exported_at: retention keeps a labelled upload until its label has been exported.

Revision ID: 0002_exported_at
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_exported_at"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("labels") as batch:
        batch.add_column(sa.Column("exported_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("labels") as batch:
        batch.drop_column("exported_at")
