"""Per-user data volumes: which are recorded on a desktop, which holders want theirs, and
a new volume's row."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from deskbroker.domain.states import PowerState
from deskbroker.store.db import Unit
from deskbroker.store.tables import Desktop, PoolMember, UserVolume


def attachments(session: Unit, center_id: str) -> list[tuple[UserVolume, Desktop | None]]:
    """The center's volumes recorded on a desktop, each with that desktop (``None`` if
    it went away)."""
    found: list[tuple[UserVolume, Desktop | None]] = []
    for volume in session.scalars(
        select(UserVolume).where(
            UserVolume.center_id == center_id, UserVolume.desktop_id.is_not(None)
        )
    ).all():
        desktop = session.get(Desktop, volume.desktop_id) if volume.desktop_id else None
        found.append((volume, desktop))
    return found


@dataclass(frozen=True)
class HeldRunning:
    """A running desktop of the pool on the center, and who holds it."""

    desktop_id: str
    external_id: str
    user_id: str
    tenant_id: str


def held_running(session: Unit, pool_id: str, center_id: str) -> list[HeldRunning]:
    """The pool's running desktops on the center that someone holds."""
    rows = session.execute(
        select(Desktop.id, Desktop.external_id, Desktop.assigned_user_id, Desktop.tenant_id)
        .join(PoolMember, PoolMember.desktop_id == Desktop.id)
        .where(
            PoolMember.pool_id == pool_id,
            Desktop.center_id == center_id,
            Desktop.assigned_user_id.is_not(None),
            Desktop.power_state == PowerState.RUNNING.value,
        )
    ).all()
    return [HeldRunning(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def of_user(session: Unit, user_id: str, center_id: str) -> UserVolume | None:
    """The user's volume on the center, if one was made."""
    return session.scalars(
        select(UserVolume).where(UserVolume.user_id == user_id, UserVolume.center_id == center_id)
    ).first()


def add(
    session: Unit, *, tenant_id: str, user_id: str, center_id: str, volume_id: str, size_gb: int
) -> UserVolume:
    """The row of a volume just made in the center."""
    volume = UserVolume(
        tenant_id=tenant_id,
        user_id=user_id,
        center_id=center_id,
        volume_id=volume_id,
        size_gb=size_gb,
    )
    session.add(volume)
    return volume
