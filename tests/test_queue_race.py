"""A waiting user signs in again while the queue serves them: they end with one desktop
of the pool, not two. The sign-in holds the user's places before it counts what they
hold, so a serving under way is waited for (and counted) and a later one passes them
over. Counted before the serving committed (on PostgreSQL a read sees only what had),
the sign-in claimed a second desktop beside the one the queue gave. On SQLite the one
writer serialises the two; the test holds there too."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from deskbroker.services import login as login_service
from deskbroker.services.context import BrokerContext
from deskbroker.services.login import LoginService
from deskbroker.services.queues import serve_queues
from deskbroker.store.tables import Desktop, Pool, QueueEntry, User
from tests.helpers import USER_PASSWORD, Api
from tests.races import Seam, while_held


def _held(ctx: BrokerContext, user: str) -> list[str]:
    with ctx.db.read() as session:
        return list(
            session.scalars(
                select(Desktop.name)
                .join(User, User.id == Desktop.assigned_user_id)
                .where(User.username == user)
            ).all()
        )


def _out_of_claim(ctx: BrokerContext, available: bool) -> None:
    # Straight to the rows: a release through the broker would serve the queue at once.
    with ctx.db.write() as session:
        session.execute(
            update(Desktop).values(availability="available" if available else "unavailable")
        )


def test_a_waiting_user_signing_in_while_the_queue_serves_them_gets_one_desktop(
    api: Api, ctx: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.seed_pool(2, users=1)
    service = LoginService(ctx)
    _out_of_claim(ctx, available=False)
    assert service.login("user0", USER_PASSWORD).offers[0].status == "queued"
    _out_of_claim(ctx, available=True)  # two free desktops, and user0 waiting for one

    # Just after the sign-in counted what the user holds.
    seam = Seam()
    seam.after(monkeypatch, login_service.claims, "held_desktops")
    answers: dict[str, Any] = {}

    def sign_in() -> None:
        answers["login"] = service.login("user0", USER_PASSWORD)

    def serve() -> None:
        # What a release or a finished build does next: serve the tenant's queues.
        with ctx.db.write() as session:
            tenant = session.scalars(select(Pool.tenant_id)).first()
            assert tenant is not None
            answers["served"] = serve_queues(session, tenant)

    # On PostgreSQL the serving does not wait for the sign-in: the place is held.
    while_held(seam, sign_in, serve, other_ends_first=ctx.db.is_postgres)

    held = _held(ctx, "user0")
    assert len(held) == 1, (held, answers)
    [offer] = answers["login"].offers
    assert offer.status == "assigned" and offer.desktop.name == held[0]
    with ctx.db.read() as session:
        assert session.scalars(select(QueueEntry.id)).all() == []
