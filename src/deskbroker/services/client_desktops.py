"""A signed-in user's own business: what they hold and wait for, giving a desktop back,
logging out everywhere."""

from __future__ import annotations

from dataclasses import dataclass

from deskbroker.domain.offers import queue_estimate_s
from deskbroker.security import TokenClaims
from deskbroker.services import access, desktops
from deskbroker.services.context import BrokerContext
from deskbroker.services.login import Offer
from deskbroker.store import claims, events, pool_names, queue_rows
from deskbroker.store.claims import HeldDesktop


@dataclass(frozen=True)
class MyDesktops:
    """The desktops a user holds, and their places in the queues they wait in."""

    held: list[HeldDesktop]
    queue: list[Offer]


def my_desktops(ctx: BrokerContext, who: TokenClaims) -> MyDesktops:
    """What the user holds now and where they wait, with an estimate for each queue.

    ``who``'s user row is checked here (``access.check_current``), in the same read: the
    route takes the token's signature alone."""
    with ctx.db.read() as session:
        access.check_current(session, who)
        held = claims.held_desktops(session, who.user_id)
        waiting = queue_rows.queue_positions(session, who.user_id)
        names = pool_names.names(session, [p for p, _ in waiting])
        intervals = pool_names.release_intervals(session, [p for p, _ in waiting])
    queue = []
    for pool_id, position in waiting:
        queue.append(
            Offer(
                pool_id,
                names.get(pool_id, ""),
                "queued",
                None,
                position,
                queue_estimate_s(position, intervals.get(pool_id)),
            )
        )
    return MyDesktops(held=held, queue=queue)


def release(ctx: BrokerContext, who: TokenClaims, desktop_id: str) -> None:
    """The user gives back a desktop they hold (``desktops.release`` says what follows)."""
    with ctx.db.write() as session:
        desktops.release(
            session,
            desktop_id=desktop_id,
            tenant_id=who.tenant_id,
            user_id=who.user_id,
            actor=who.username,
        )


def logout(ctx: BrokerContext, who: TokenClaims) -> None:
    """Every session token of the user stops working, on every device; one event says so."""
    with ctx.db.write() as session:
        access.revoke_tokens(session, who.user_id)
        events.append(
            session,
            "logout",
            tenant_id=who.tenant_id,
            actor=who.username,
            user_id=who.user_id,
            detail={},
        )


__all__ = ["HeldDesktop", "MyDesktops", "logout", "my_desktops", "release"]
