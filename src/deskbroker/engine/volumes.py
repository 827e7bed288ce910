"""Per-user data volumes: a user's disk follows them across single-use desktops.

Run as part of a pool's provisioning job: every assigned desktop of the pool gets its
user's volume (created on first use); a volume whose desktop went to someone else, or
went away, is detached first. Attaching happens seconds after the assignment, off the
login path.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from deskbroker.centers.base import Capability, CenterDriver
from deskbroker.engine.drivers import DriverCache
from deskbroker.errors import CenterError
from deskbroker.services.context import BrokerContext
from deskbroker.store import events
from deskbroker.store.tables import Center, Desktop, PoolMember, User, UserVolume


def _detach_stale(session: Session, driver: CenterDriver, center_id: str) -> None:
    for volume in session.scalars(
        select(UserVolume).where(
            UserVolume.center_id == center_id, UserVolume.desktop_id.is_not(None)
        )
    ).all():
        desktop = session.get(Desktop, volume.desktop_id) if volume.desktop_id else None
        if (
            desktop is not None
            and desktop.assigned_user_id == volume.user_id
            and desktop.external_id == volume.attached_to
        ):
            continue
        if volume.attached_to:
            driver.detach_volume(volume.attached_to, volume.volume_id)
        volume.desktop_id = volume.attached_to = None
        events.append(
            session,
            "volume.detach",
            tenant_id=volume.tenant_id,
            actor="engine",
            user_id=volume.user_id,
            detail={"volume": volume.volume_id},
        )


def follow_users(
    ctx: BrokerContext, drivers: DriverCache, pool_id: str, center: Center, size_gb: int
) -> int:
    """Attach each holder's volume to their desktop in the pool; returns attachments made."""
    driver = drivers.get(center)
    if Capability.VOLUMES not in driver.capabilities:
        return 0
    attached = 0
    with ctx.db.write() as session:
        _detach_stale(session, driver, center.id)
        held = session.execute(
            select(Desktop.id, Desktop.external_id, Desktop.assigned_user_id, Desktop.tenant_id)
            .join(PoolMember, PoolMember.desktop_id == Desktop.id)
            .where(
                PoolMember.pool_id == pool_id,
                Desktop.center_id == center.id,
                Desktop.assigned_user_id.is_not(None),
                Desktop.power_state == "running",
            )
        ).all()
        for desktop_id, external_id, user_id, tenant_id in held:
            volume = session.scalars(
                select(UserVolume).where(
                    UserVolume.user_id == user_id, UserVolume.center_id == center.id
                )
            ).first()
            if volume is not None and volume.desktop_id == desktop_id:
                continue
            if volume is not None and volume.desktop_id is not None:
                continue  # still on another desktop of theirs; detached when that ends
            if volume is None:
                user = session.get(User, user_id)
                name = f"data-{user.username if user else user_id}"[:200]
                volume = UserVolume(
                    tenant_id=tenant_id,
                    user_id=user_id,
                    center_id=center.id,
                    volume_id=driver.create_volume(
                        name, size_gb, {"deskbroker_user": str(user_id)}
                    ),
                    size_gb=size_gb,
                )
                session.add(volume)
            try:
                driver.attach_volume(external_id, volume.volume_id)
            except CenterError as exc:
                events.append(
                    session,
                    "volume.attach_failed",
                    tenant_id=tenant_id,
                    actor="engine",
                    user_id=user_id,
                    desktop_id=desktop_id,
                    detail={"error": exc.detail},
                )
                continue
            volume.desktop_id, volume.attached_to = desktop_id, external_id
            events.append(
                session,
                "volume.attach",
                tenant_id=tenant_id,
                actor="engine",
                user_id=user_id,
                desktop_id=desktop_id,
                detail={"volume": volume.volume_id},
            )
            attached += 1
    return attached
