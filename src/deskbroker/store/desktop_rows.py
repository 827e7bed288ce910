"""A single desktop's row as connect, start on connect, release and power read and lock it.

Connect reads the desktop with its holder's user row in one statement (the connect path's
budget); a start or a power action locks the row (``FOR UPDATE``) before it records what
the center said, so of several brokers acting at once one decides.
"""

from __future__ import annotations

from sqlalchemy import func, select, update

from deskbroker.domain.states import (
    AVAILABILITY_TRANSITIONS,
    POWER_TRANSITIONS,
    Availability,
    PowerState,
    SessionState,
    power_state,
    transition,
)
from deskbroker.store.db import Unit
from deskbroker.store.holders import UserHolder
from deskbroker.store.tables import Desktop, PoolMember, SessionRow, User


def held_with_holder(
    session: Unit, desktop_id: str, tenant_id: str, user_id: str
) -> tuple[Desktop, UserHolder] | None:
    """The desktop if ``user_id`` of ``tenant_id`` holds it, with the holder's user row
    (to check the token against), in one statement."""
    found = session.execute(
        select(Desktop, User.disabled, User.role, User.token_generation, User.tenant_id)
        .join(User, User.id == Desktop.assigned_user_id)
        .where(
            Desktop.id == desktop_id,
            Desktop.tenant_id == tenant_id,
            Desktop.assigned_user_id == user_id,
        )
    ).first()
    if found is None:
        return None
    holder = UserHolder(bool(found[1]), str(found[2]), int(found[3] or 0), str(found[4]))
    return found[0], holder


def lock(session: Unit, desktop_id: str, tenant_id: str | None = None) -> Desktop | None:
    """The desktop's row, locked until the unit ends, with its values as they are once
    locked (a copy the unit read before is refreshed, not kept). With ``tenant_id``,
    only that tenant's: another tenant's row is neither locked nor waited for."""
    query = select(Desktop).where(Desktop.id == desktop_id)
    if tenant_id is not None:
        query = query.where(Desktop.tenant_id == tenant_id)
    return session.scalars(
        query.with_for_update().execution_options(populate_existing=True)
    ).first()


def of_tenant(session: Unit, desktop_id: str, tenant_id: str) -> Desktop | None:
    """The desktop if it is the tenant's."""
    return session.scalars(
        select(Desktop).where(Desktop.id == desktop_id, Desktop.tenant_id == tenant_id)
    ).first()


def clear_starting(session: Unit, desktop_id: str) -> None:
    """Forget that a start was sent (it failed): the next connect may send it again."""
    session.execute(update(Desktop).where(Desktop.id == desktop_id).values(starting_since=None))


def is_member(session: Unit, pool_id: str, desktop_id: str) -> bool:
    """Whether the desktop is a member of the pool."""
    found = session.scalar(
        select(PoolMember.desktop_id).where(
            PoolMember.pool_id == pool_id, PoolMember.desktop_id == desktop_id
        )
    )
    return found is not None


def session_users(session: Unit, desktop_id: str) -> list[str]:
    """Who has a session on the desktop that is not logged out (somebody may come back
    to it), one name per session."""
    return list(
        session.scalars(
            select(SessionRow.username).where(
                SessionRow.desktop_id == desktop_id,
                SessionRow.state != SessionState.LOGGED_OUT.value,
            )
        ).all()
    )


def count_ready_named(session: Unit, prefix: str) -> int:
    """How many running, available desktops have a name starting with ``prefix``."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Desktop)
            .where(
                Desktop.name.startswith(prefix, autoescape=True),
                Desktop.power_state == PowerState.RUNNING.value,
                Desktop.availability == Availability.AVAILABLE.value,
            )
        )
        or 0
    )


def back_in_claim(desktop: Desktop) -> None:
    """The desktop available again, unless it is being removed (an administrator's
    removal marks it deleting): the claim must never offer that one. For a take-out
    that did not end in a terminate."""
    if power_state(desktop.power_state) in (PowerState.DELETING, PowerState.DELETED):
        return
    if desktop.availability != Availability.AVAILABLE.value:
        desktop.availability = transition(
            AVAILABILITY_TRANSITIONS,
            Availability(desktop.availability),
            Availability.AVAILABLE,
            subject=f"desktop {desktop.name}",
        ).value


def take_out(desktop: Desktop, current: PowerState, to: PowerState) -> None:
    """Move the desktop from power state ``current`` to ``to`` and out of every offer
    (unavailable), each by its transition table: a failed build's quarantine, a delete
    under way."""
    subject = f"desktop {desktop.name}"
    desktop.power_state = transition(POWER_TRANSITIONS, current, to, subject=subject).value
    desktop.availability = transition(
        AVAILABILITY_TRANSITIONS,
        Availability(desktop.availability),
        Availability.UNAVAILABLE,
        subject=subject,
    ).value
