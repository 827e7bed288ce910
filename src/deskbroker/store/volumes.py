"""Per-user data volumes: which are recorded on a desktop, which holders want theirs, and
a volume's row: reserved before the center is asked, its id recorded once made.

A reserved row's ``volume_id`` is ``PENDING`` followed by the reservation's token: the
unique key on (user, center) makes one run the only maker of a user's volume there, and a
row with no cloud id yet never passes for one to attach or detach."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

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
    """The pool's running desktops on the center that someone holds, each holder's
    earliest assigned first (the one their single volume goes to)."""
    rows = session.execute(
        select(Desktop.id, Desktop.external_id, Desktop.assigned_user_id, Desktop.tenant_id)
        .join(PoolMember, PoolMember.desktop_id == Desktop.id)
        .where(
            PoolMember.pool_id == pool_id,
            Desktop.center_id == center_id,
            Desktop.assigned_user_id.is_not(None),
            Desktop.power_state == PowerState.RUNNING.value,
        )
        .order_by(Desktop.assigned_at, Desktop.id)
    ).all()
    return [HeldRunning(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def of_user(session: Unit, user_id: str, center_id: str) -> UserVolume | None:
    """The user's volume on the center, if one was made."""
    return session.scalars(
        select(UserVolume).where(UserVolume.user_id == user_id, UserVolume.center_id == center_id)
    ).first()


PENDING = "creating:"


def is_pending(volume_id: str) -> bool:
    """Whether a row's ``volume_id`` is a reservation: no volume made (or recorded) yet."""
    return volume_id.startswith(PENDING)


def still_held(
    session: Unit, desktop_id: str, external_id: str, user_id: str, *, lock: bool = False
) -> bool:
    """Whether the desktop (as the same instance) is still held by the user.

    ``lock`` (a write unit's): the desktop's row is share-locked until the unit ends. A
    release or hand-over under way (its update made, not yet committed) is waited for
    and read as it committed, where a plain read sees the holder it is taking away; and
    none begins until then, so what the unit records is true when it commits. Taken
    before the volume's row (``lock_row``): every unit that locks both goes desktop
    first, as a center's delete (its desktops, then the volumes of the center) does,
    and the release path locks no volume. A share lock leaves the key-share lock a
    membership refresh takes on the row free (``store/membership.hold``)."""
    query = select(Desktop.assigned_user_id, Desktop.external_id).where(Desktop.id == desktop_id)
    if lock:
        query = query.with_for_update(read=True)
    found = session.execute(query).first()
    return found is not None and (found[0], found[1]) == (user_id, external_id)


def lock_row(session: Unit, row_id: str) -> UserVolume | None:
    """The volume's row, locked until the unit ends and read as last committed: a unit
    that checks it before writing it (its attachment) sees a change another run
    committed meanwhile, and none commits one until this unit ends."""
    return session.scalars(
        select(UserVolume)
        .where(UserVolume.id == row_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()


def reserve(
    session: Unit, *, tenant_id: str, user_id: str, center_id: str, token: str, size_gb: int
) -> str | None:
    """The id of the row of a volume about to be asked for; ``None`` when another run
    reserved the user's volume in this center first (the unique key on user and center
    decides, in a savepoint, so the caller's unit goes on)."""
    volume = UserVolume(
        tenant_id=tenant_id,
        user_id=user_id,
        center_id=center_id,
        volume_id=PENDING + token,
        size_gb=size_gb,
    )
    try:
        with session.begin_nested():
            session.add(volume)
    except IntegrityError:
        return None
    return volume.id


def take_over(session: Unit, row_id: str, old: str, token: str) -> bool:
    """Make an abandoned reservation ``token``'s; False when another run moved it on."""
    done = session.execute(
        update(UserVolume)
        .where(UserVolume.id == row_id, UserVolume.volume_id == old)
        .values(volume_id=PENDING + token)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def made(session: Unit, row_id: str, token: str, volume_id: str) -> UserVolume | None:
    """Record the id of the volume reservation ``token`` asked for; ``None`` when the
    reservation is no longer that run's (taken over, or the user went away).

    One statement, its check in its ``WHERE``: a take-over that commits after a read of
    the row (and before its write) would be written over, its run left sure it holds a
    reservation that names another volume."""
    return session.scalars(
        update(UserVolume)
        .where(UserVolume.id == row_id, UserVolume.volume_id == PENDING + token)
        .values(volume_id=volume_id)
        .returning(UserVolume)
    ).first()


def release(session: Unit, row_id: str, token: str) -> bool:
    """Drop reservation ``token`` when the center refused to make its volume; False when
    it is no longer that run's. One statement, as ``made``: a reservation another run
    took over meanwhile is that run's, and stays."""
    done = session.execute(
        delete(UserVolume).where(UserVolume.id == row_id, UserVolume.volume_id == PENDING + token)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]
