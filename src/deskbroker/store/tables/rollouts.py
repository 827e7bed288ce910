"""Golden images rolled out: a pool's rollout, its upkeep settings (scheduled refresh or
reboot, revert on release) and the desktops being rebuilt or rebooted."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from deskbroker.domain.states import RolloutState
from deskbroker.store.tables.base import Base, _created, _id, _one_of, _tenant, _updated, utcnow


class PoolRollout(Base):
    """A pool's move onto an image (one per pool: a new rollout replaces a done one)."""

    __tablename__ = "pool_rollouts"
    __table_args__ = (_one_of("state", RolloutState),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    pool_id: Mapped[str] = mapped_column(
        ForeignKey("pools.id", ondelete="CASCADE"), unique=True, index=True
    )
    state: Mapped[str] = mapped_column(String(20), default=RolloutState.ROLLING.value)
    center_id: Mapped[str] = mapped_column(ForeignKey("centers.id", ondelete="CASCADE"))
    # The image aimed at now (as the administrator named it, and its id on the center)
    # and the one the pool had before: a roll back swaps them.
    image: Mapped[str] = mapped_column(String(255))
    image_id: Mapped[str] = mapped_column(String(255))
    previous_image: Mapped[str] = mapped_column(String(255), default="")
    previous_image_id: Mapped[str] = mapped_column(String(255), default="")
    rolled_back: Mapped[bool] = mapped_column(Boolean, default=False)
    # Persistent desktops are rebuilt only when asked (their users' data volumes stay
    # attached through a rebuild), and then only while nobody has a session on them.
    include_persistent: Mapped[bool] = mapped_column(Boolean, default=False)
    # Rebuilds under way at once: the rest of the pool keeps serving logins.
    batch_size: Mapped[int] = mapped_column(Integer, default=5)
    last_error: Mapped[str] = mapped_column(Text, default="")
    started_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class DesktopRebuild(Base):
    """A desktop the broker is rebuilding (out of the claim until it is back), or whose
    rebuild failed (``failed``, kept out until an administrator looks)."""

    __tablename__ = "desktop_rebuilds"
    desktop_id: Mapped[str] = mapped_column(
        ForeignKey("desktops.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = _tenant()
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), index=True)
    # Why: a rollout, a scheduled refresh or reboot, or a revert on release.
    reason: Mapped[str] = mapped_column(String(20))
    # The image to rebuild from: an id, or (until the center named its id once the
    # rebuild was asked) the pool's image as written. Empty for a reboot.
    image_id: Mapped[str] = mapped_column(String(255))
    # The center was asked (taken out first, asked after: no call in a transaction).
    started: Mapped[bool] = mapped_column(Boolean, default=False)
    # The desktop's availability before: what it gets back once rebuilt.
    was_available: Mapped[bool] = mapped_column(Boolean, default=True)
    failed: Mapped[bool] = mapped_column(Boolean, default=False)
    message: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)


class PoolUpkeep(Base):
    """A pool's desktop upkeep: free desktops rebuilt to the pool's image (or rebooted)
    each day in a time window, and a released desktop rebuilt before anyone else gets
    it (the equivalent of reverting to a snapshot)."""

    __tablename__ = "pool_upkeep"
    pool_id: Mapped[str] = mapped_column(
        ForeignKey("pools.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = _tenant()
    refresh_on_release: Mapped[bool] = mapped_column(Boolean, default=False)
    # none, refresh or reboot; at "HH:MM" in ``timezone``, for ``window_minutes``.
    scheduled_action: Mapped[str] = mapped_column(String(20), default="none")
    scheduled_at: Mapped[str] = mapped_column(String(5), default="02:00")
    window_minutes: Mapped[int] = mapped_column(Integer, default=60)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # The local date of the window last served: once a day.
    last_scheduled_on: Mapped[str] = mapped_column(String(10), default="")
    updated_at: Mapped[datetime] = _updated()
