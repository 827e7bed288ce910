"""What placing a pool's builds over several centers reads and writes: each center's
load, and the centers that said they are full (``center_room``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select

from deskbroker.domain.placement import CenterLoad
from deskbroker.store.db import Unit
from deskbroker.store.tables import Center, CenterRoom, Desktop, PoolMember


def loads(
    session: Unit, pool_id: str, center_ids: Sequence[str], now: datetime
) -> list[CenterLoad]:
    """Each center's load, in ``center_ids``' order: the pool's desktops there, all
    desktops there, and whether it is full at ``now`` (or failing). Four statements, whatever the
    number of centers."""
    ids = list(center_ids)
    if not ids:
        return []
    # Rows as (center, count) pairs; a Result itself has keys(), so dict() needs a list.
    mine = dict(
        session.execute(
            select(Desktop.center_id, func.count())
            .join(PoolMember, PoolMember.desktop_id == Desktop.id)
            .where(PoolMember.pool_id == pool_id, Desktop.center_id.in_(ids))
            .group_by(Desktop.center_id)
        ).all()
    )
    every = dict(
        session.execute(
            select(Desktop.center_id, func.count())
            .where(Desktop.center_id.in_(ids))
            .group_by(Desktop.center_id)
        ).all()
    )
    full = set(
        session.scalars(
            select(CenterRoom.center_id).where(
                CenterRoom.center_id.in_(ids), CenterRoom.full_until > now
            )
        )
    )
    # A center whose last scan failed (unreachable, credentials refused) is passed over
    # too while another has room: its builds would fail the same way.
    full |= set(
        session.scalars(select(Center.id).where(Center.id.in_(ids), Center.status == "error"))
    )
    return [CenterLoad(c, int(mine.get(c, 0)), int(every.get(c, 0)), c in full) for c in ids]


def mark_full(
    session: Unit, *, center_id: str, tenant_id: str, until: datetime, reason: str
) -> None:
    """The center refused a build for lack of room: no pool places a build there before
    ``until`` (a later refusal moves it on)."""
    row = session.get(CenterRoom, center_id, with_for_update=True)
    if row is None:
        session.add(
            CenterRoom(
                center_id=center_id, tenant_id=tenant_id, full_until=until, reason=reason[:500]
            )
        )
    else:
        row.full_until = max(row.full_until, until)
        row.reason = reason[:500]


def mark_room(session: Unit, center_id: str) -> None:
    """The center took a build: it has room again."""
    session.execute(delete(CenterRoom).where(CenterRoom.center_id == center_id))


def full_until(session: Unit, center_ids: Sequence[str]) -> dict[str, tuple[datetime, str]]:
    """When each full center of ``center_ids`` may be tried again, and why it is full."""
    rows = session.execute(
        select(CenterRoom.center_id, CenterRoom.full_until, CenterRoom.reason).where(
            CenterRoom.center_id.in_(list(center_ids))
        )
    ).all()
    return {c: (until, reason) for c, until, reason in rows}
