"""a webhook remembers who last set it up

Revision ID: 0010_webhook_setter
Revises: 0009_center_setter
Create Date: 2026-12-07 10:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_webhook_setter"
down_revision = "0009_center_setter"
# Adds a nullable column: older nodes run on it unchanged. A webhook they create, and every
# webhook from before, names no setter and goes on delivering as it always did until a
# newer node records who changes it (one an older node changes keeps the setter it had).
# No foreign key: deleting a user must neither be refused for their webhooks nor delete
# them; the fan-out switches off a webhook whose setter is gone.
phase = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("set_by_user_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_column("set_by_user_id")
