"""An agent's token refresh (``POST /api/v1/agent/token``) is open to anyone: a wrong
refresh secret is refused before the desktop's row is locked, so it never holds (nor
waits for) the row the desktop's claims and agent events take."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text, update

from deskbroker.errors import Unauthorized
from deskbroker.services import agents
from deskbroker.store.tables import Desktop
from tests.helpers import Api


def test_a_wrong_refresh_secret_neither_locks_nor_waits_for_the_desktop(api: Api) -> None:
    ctx = api.ctx
    ids = api.seed_pool(1)
    desktop = api.get(f"desktops?center_id={ids['center']}")["items"][0]["id"]
    with ctx.db.write() as session:  # an enrolled agent's secret, hashed as it is kept
        session.execute(
            update(Desktop)
            .where(Desktop.id == desktop)
            .values(agent_refresh_hash=agents._hash("the-right-secret"), agent_token_id="t1")
        )
    outcome: list[BaseException] = []

    def refresh() -> None:
        try:
            agents.refresh(ctx, desktop, "a-guess")
        except Unauthorized as exc:
            outcome.append(exc)

    with ctx.db.engine.connect() as holder:
        if ctx.db.is_postgres:  # a claim or agent event holds the row (SQLite: no row locks)
            holder.execute(text("SELECT 1 FROM desktops WHERE id = :d FOR UPDATE"), {"d": desktop})
        guessing = threading.Thread(target=refresh)
        guessing.start()
        guessing.join(5)
        waited = guessing.is_alive()
        holder.rollback()
    guessing.join(30)
    assert not waited, "a wrong secret waited for the desktop's row"
    assert [type(e) for e in outcome] == [Unauthorized]
    # The right one still buys a token.
    assert agents.refresh(ctx, desktop, "the-right-secret").token
    with pytest.raises(Unauthorized):
        agents.refresh(ctx, desktop, "the-right-secret")  # once: the secret was replaced
