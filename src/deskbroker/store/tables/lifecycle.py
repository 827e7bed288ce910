"""Day-two lifecycle: desktops an administrator deleted that the broker did not build,
remembered so that later scans of their center leave them out (migration 0002)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from deskbroker.store.tables.base import Base, _created, _id, _tenant


class ForgottenDesktop(Base):
    """A machine of a center that scans skip: deleted by an administrator, not destroyed
    (the broker did not build it). Keyed by center and the center's own id for it."""

    __tablename__ = "forgotten_desktops"
    __table_args__ = (UniqueConstraint("center_id", "external_id"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    center_id: Mapped[str] = mapped_column(ForeignKey("centers.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(200))
    # The name it had, so that the list of forgotten machines reads as words.
    name: Mapped[str] = mapped_column(String(200), default="")
    actor: Mapped[str] = mapped_column(String(200), default="")
    forgotten_at: Mapped[datetime] = _created()
