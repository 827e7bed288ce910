"""Where a pool spanning centers may build: the centers that said they are full."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from deskbroker.store.tables.base import Base, _tenant, _updated


class CenterRoom(Base):
    """A center that refused a build for its quota or capacity: pools spanning several
    centers place no new build there until ``full_until``, and overflow to the next.
    One row per full center (shared by every pool building there); none when it has room."""

    __tablename__ = "center_room"
    center_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("centers.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = _tenant()
    full_until: Mapped[datetime] = mapped_column()
    reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = _updated()
