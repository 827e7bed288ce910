"""Per-user data volumes: a user's disk follows them across single-use desktops.

Run as part of a pool's provisioning job: every assigned desktop of the pool gets its
user's volume (created on first use); a volume whose desktop went to someone else, or
went away, is detached first. Attaching happens seconds after the assignment, off the
login path.
"""

from __future__ import annotations

from dataclasses import dataclass

from deskbroker.centers.base import Capability, CenterDriver
from deskbroker.engine.drivers import DriverCache
from deskbroker.errors import CenterError
from deskbroker.services.context import BrokerContext
from deskbroker.store import events
from deskbroker.store import volumes as store
from deskbroker.store.db import Unit
from deskbroker.store.tables import Center, User, UserVolume


@dataclass(frozen=True)
class _Stale:
    """A volume recorded on a desktop that is no longer its user's."""

    id: str
    volume_id: str
    attached_to: str | None
    desktop_id: str | None


@dataclass(frozen=True)
class _Wanted:
    """A holder's desktop that should carry their volume (``volume_id`` once made)."""

    center_id: str
    desktop_id: str
    external_id: str
    user_id: str
    tenant_id: str
    volume_row: str | None
    volume_id: str | None
    name: str


def _stale(session: Unit, center_id: str) -> list[_Stale]:
    found: list[_Stale] = []
    for volume, desktop in store.attachments(session, center_id):
        if (
            desktop is not None
            and desktop.assigned_user_id == volume.user_id
            and desktop.external_id == volume.attached_to
        ):
            continue
        found.append(_Stale(volume.id, volume.volume_id, volume.attached_to, volume.desktop_id))
    return found


def _wanted(session: Unit, pool_id: str, center_id: str) -> list[_Wanted]:
    wanted: list[_Wanted] = []
    for held in store.held_running(session, pool_id, center_id):
        user_id = held.user_id
        volume = store.of_user(session, user_id, center_id)
        if volume is not None and volume.desktop_id is not None:
            continue  # on this desktop already, or still on another one that is detached first
        user = session.get(User, user_id) if volume is None else None
        wanted.append(
            _Wanted(
                center_id,
                held.desktop_id,
                held.external_id,
                user_id,
                held.tenant_id,
                volume.id if volume else None,
                volume.volume_id if volume else None,
                f"data-{user.username if user else user_id}"[:200],
            )
        )
    return wanted


def _detach(ctx: BrokerContext, driver: CenterDriver, stale: _Stale) -> None:
    if stale.attached_to:
        driver.detach_volume(stale.attached_to, stale.volume_id)
    with ctx.db.write() as session:
        volume = session.get(UserVolume, stale.id)
        if volume is None or (volume.desktop_id, volume.attached_to) != (
            stale.desktop_id,
            stale.attached_to,
        ):
            return  # moved on while the center was asked
        volume.desktop_id = volume.attached_to = None
        events.append(
            session,
            "volume.detach",
            tenant_id=volume.tenant_id,
            actor="engine",
            user_id=volume.user_id,
            detail={"volume": volume.volume_id},
        )


def _attach(ctx: BrokerContext, driver: CenterDriver, want: _Wanted, size_gb: int) -> bool:
    """Make (if need be) and attach one holder's volume; the center is asked first, the
    outcome recorded after, as it happened (a desktop that changed hands meanwhile has
    the volume detached on the next run)."""
    volume_id = want.volume_id or driver.create_volume(
        want.name, size_gb, {"deskbroker_user": str(want.user_id)}
    )
    error = ""
    try:
        driver.attach_volume(want.external_id, volume_id)
    except CenterError as exc:
        error = exc.detail
    with ctx.db.write() as session:
        volume = session.get(UserVolume, want.volume_row) if want.volume_row else None
        if volume is None:
            volume = store.add(
                session,
                tenant_id=want.tenant_id,
                user_id=want.user_id,
                center_id=want.center_id,
                volume_id=volume_id,
                size_gb=size_gb,
            )
        if error:
            events.append(
                session,
                "volume.attach_failed",
                tenant_id=want.tenant_id,
                actor="engine",
                user_id=want.user_id,
                desktop_id=want.desktop_id,
                detail={"error": error},
            )
            return False
        volume.desktop_id, volume.attached_to = want.desktop_id, want.external_id
        events.append(
            session,
            "volume.attach",
            tenant_id=want.tenant_id,
            actor="engine",
            user_id=want.user_id,
            desktop_id=want.desktop_id,
            detail={"volume": volume.volume_id},
        )
    return True


def follow_users(
    ctx: BrokerContext, drivers: DriverCache, pool_id: str, center: Center, size_gb: int
) -> int:
    """Attach each holder's volume to their desktop in the pool; returns attachments made.

    What to do is read in one short unit; each center call runs with no transaction
    open and its outcome is written in a short unit of its own."""
    driver = drivers.get(center)
    if Capability.VOLUMES not in driver.capabilities:
        return 0
    with ctx.db.read() as session:
        stale = _stale(session, center.id)
    for item in stale:
        _detach(ctx, driver, item)
    with ctx.db.read() as session:
        wanted = _wanted(session, pool_id, center.id)
    return sum(_attach(ctx, driver, want, size_gb) for want in wanted)
