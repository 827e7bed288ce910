"""an enrolment key remembers the role of the administrator who minted it

Revision ID: 0008_enrolment_key_minter
Revises: 0007_timer_took_out
Create Date: 2026-12-06 21:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_enrolment_key_minter"
down_revision = "0007_timer_took_out"
# Adds a nullable column: older nodes run on it unchanged (they never set it, and a key
# without it stands for a tenant administrator, the weaker reading).
phase = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrolment_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("minted_by_role", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrolment_keys", schema=None) as batch_op:
        batch_op.drop_column("minted_by_role")
