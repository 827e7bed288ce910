"""Per-user data volumes: a user's disk follows them across single-use desktops.

Run as part of a pool's provisioning job: every assigned desktop of the pool gets its
user's volume (one per user and center, on the first desktop they hold there); a volume
whose desktop went to someone else, or went away, is detached first.

A volume is made in three steps, none of them a center call inside a transaction: its
row is reserved (the unique key on user and center lets one run in the whole cluster
win), the center is asked, and the id recorded. It is attached on a later run, once the
center has had the seconds it takes to make it ready; the attachment is recorded at once
and the desktop checked again: one that changed hands meanwhile has the volume detached
straight away, so its next holder never sees this user's data.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from deskbroker.centers.base import Capability, CenterDriver
from deskbroker.domain.timestamps import aware
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.turns import NoTurn
from deskbroker.errors import CenterError
from deskbroker.services.context import BrokerContext
from deskbroker.store import events
from deskbroker.store import volumes as store
from deskbroker.store.db import Unit
from deskbroker.store.tables import Center, User

# A reservation this old was left by a run that stopped between asking the center and
# recording the answer (every center call gives up long before): another run takes it
# over. The volume the stopped run may have made is not found again (drivers cannot list
# volumes); its metadata names the user, the center and the reservation for an operator.
ABANDONED_AFTER = timedelta(minutes=15)


@dataclass(frozen=True)
class _Stale:
    """A volume attached to a desktop that is no longer its user's (``id`` is ``None``
    for an attachment no row records)."""

    id: str | None
    volume_id: str
    attached_to: str | None
    desktop_id: str | None


@dataclass(frozen=True)
class _Wanted:
    """A holder's desktop that should carry their volume: ``volume_id`` once made,
    ``abandoned`` the reservation to take over when a run left it unfinished."""

    center_id: str
    desktop_id: str
    external_id: str
    user_id: str
    tenant_id: str
    volume_row: str | None
    volume_id: str | None
    abandoned: str | None
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


def _wanted(session: Unit, pool_id: str, center_id: str, now: datetime) -> list[_Wanted]:
    wanted: list[_Wanted] = []
    seen: set[str] = set()
    for held in store.held_running(session, pool_id, center_id):
        if held.user_id in seen:
            continue  # one volume per user and center, on the first desktop they hold
        seen.add(held.user_id)
        volume = store.of_user(session, held.user_id, center_id)
        if volume is not None and volume.desktop_id is not None:
            continue  # on this desktop already, or still on another one that is detached first
        abandoned = None
        if volume is not None and store.is_pending(volume.volume_id):
            if now - aware(volume.updated_at) < ABANDONED_AFTER:
                continue  # another run is making it
            abandoned = volume.volume_id
        made = volume is not None and abandoned is None
        user = None if made else session.get(User, held.user_id)
        wanted.append(
            _Wanted(
                center_id,
                held.desktop_id,
                held.external_id,
                held.user_id,
                held.tenant_id,
                volume.id if volume else None,
                volume.volume_id if volume and made else None,
                abandoned,
                f"data-{user.username if user else held.user_id}"[:200],
            )
        )
    return wanted


def _detach(ctx: BrokerContext, driver: CenterDriver, stale: _Stale) -> None:
    if stale.attached_to:
        driver.detach_volume(stale.attached_to, stale.volume_id)
    if stale.id is None:
        return
    with ctx.db.write() as session:
        # Locked, so read as last committed: between a plain read and this write, another
        # run could detach the volume too and a third record it on the holder's new
        # desktop, a record this write would clear (the volume attached, its row not).
        volume = store.lock_row(session, stale.id)
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


def _reserve(ctx: BrokerContext, want: _Wanted, token: str, size_gb: int) -> str | None:
    """The row reserved for the volume as ``token``'s; ``None`` when another run holds it."""
    with ctx.db.write() as session:
        if want.volume_row is not None and want.abandoned is not None:
            taken = store.take_over(session, want.volume_row, want.abandoned, token)
            return want.volume_row if taken else None
        # None: another run (another pool, or this job twice) reserved it first.
        return store.reserve(
            session,
            tenant_id=want.tenant_id,
            user_id=want.user_id,
            center_id=want.center_id,
            token=token,
            size_gb=size_gb,
        )


def _make(ctx: BrokerContext, driver: CenterDriver, want: _Wanted, size_gb: int) -> None:
    """Reserve, make and record one holder's volume; it is attached on a later run."""
    token = secrets.token_hex(16)
    row = _reserve(ctx, want, token, size_gb)
    if row is None:
        return
    metadata = {
        "deskbroker_user": want.user_id,
        "deskbroker_center": want.center_id,
        "deskbroker_reservation": token,
    }
    try:
        volume_id = driver.create_volume(want.name, size_gb, metadata)
    except CenterError as exc:
        with ctx.db.write() as session:
            store.release(session, row, token)
            _event(session, want, "volume.create_failed", {"error": exc.detail})
        return
    with ctx.db.write() as session:
        volume = store.made(session, row, token, volume_id)
        if volume is None:
            # Only after a reservation outlived ABANDONED_AFTER: say which volume is extra.
            _event(session, want, "volume.orphaned", {"volume": volume_id})
            return
        _event(session, want, "volume.create", {"volume": volume_id})


def _attach(ctx: BrokerContext, driver: CenterDriver, want: _Wanted, volume_id: str) -> bool:
    """Attach a holder's made volume to their desktop, then make sure the desktop is still
    theirs: if it changed hands while the center was asked, the volume comes off at once."""
    with ctx.db.read() as session:
        if not store.still_held(session, want.desktop_id, want.external_id, want.user_id):
            return False  # released since it was read: the next run looks again
    try:
        driver.attach_volume(want.external_id, volume_id)
    except CenterError as exc:
        with ctx.db.write() as session:
            _event(session, want, "volume.attach_failed", {"error": exc.detail})
        return False
    stale = _record_attach(ctx, want, volume_id)
    if stale is not None:
        _detach(ctx, driver, stale)
        return False
    return True


def _record_attach(ctx: BrokerContext, want: _Wanted, volume_id: str) -> _Stale | None:
    """Record an attachment just made; the attachment to undo when the desktop is no
    longer the user's (or another run recorded the volume elsewhere meanwhile)."""
    unrecorded = _Stale(None, volume_id, want.external_id, want.desktop_id)
    with ctx.db.write() as session:
        # Both rows locked, the desktop's first (``still_held`` says why that order):
        # two runs that each read the volume unattached both recorded theirs, the later
        # over the earlier; a release under way when a plain read found the desktop held
        # committed after, leaving the volume on a desktop its user no longer holds
        # (perhaps handed to the next in the queue) until the next run.
        held = store.still_held(session, want.desktop_id, want.external_id, want.user_id, lock=True)
        volume = store.lock_row(session, want.volume_row) if want.volume_row else None
        if volume is None or volume.volume_id != volume_id:
            return unrecorded  # the user (and their row) went away meanwhile
        if (volume.desktop_id, volume.attached_to) == (want.desktop_id, want.external_id):
            return None  # another run recorded this very attachment meanwhile
        if volume.desktop_id is not None:
            return unrecorded  # another run attached it elsewhere meanwhile
        volume.desktop_id, volume.attached_to = want.desktop_id, want.external_id
        _event(session, want, "volume.attach", {"volume": volume_id})
        if held:
            return None
        # Recorded all the same: should the detach fail, the next run finds it stale.
        return _Stale(volume.id, volume_id, want.external_id, want.desktop_id)


def _event(session: Unit, want: _Wanted, kind: str, detail: dict[str, str]) -> None:
    events.append(
        session,
        kind,
        tenant_id=want.tenant_id,
        actor="engine",
        user_id=want.user_id,
        desktop_id=want.desktop_id,
        detail=detail,
    )


def follow_users(
    ctx: BrokerContext, drivers: DriverCache, pool_id: str, center: Center, size_gb: int
) -> int:
    """Attach each holder's volume to their desktop in the pool (making it first, to be
    attached on the next run); returns attachments made.

    What to do is read in one short unit; each center call runs with no transaction
    open and its outcome is written in a short unit of its own. The calls take one of
    the center's turns, only when there is something to do; refused one, the pool's job
    comes back after a turn's wait (``NoTurn``), since a volume may still be attached to
    its former holder's desktop."""
    driver = drivers.get(center)
    if Capability.VOLUMES not in driver.capabilities:
        return 0
    with ctx.db.read() as session:
        stale = _stale(session, center.id)
        wanted = _wanted(session, pool_id, center.id, datetime.now(UTC))
    if not stale and not wanted:
        return 0
    with drivers.turn(center.id) as took:
        if not took:
            raise NoTurn(f"center {center.name} holds its share of the engine's workers")
        for item in stale:
            _detach(ctx, driver, item)
        if stale:
            # A volume just detached may be wanted on its holder's new desktop at once.
            with ctx.db.read() as session:
                wanted = _wanted(session, pool_id, center.id, datetime.now(UTC))
        attached = 0
        for want in wanted:
            if want.volume_id is None:
                _make(ctx, driver, want, size_gb)
            else:
                attached += _attach(ctx, driver, want, want.volume_id)
    return attached
