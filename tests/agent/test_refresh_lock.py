"""An agent's token refresh (``POST /api/v1/agent/token``) is open to anyone: a wrong
refresh secret is refused before the desktop's row is locked, so it never holds (nor
waits for) the row the desktop's claims and agent events take."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from deskbroker.errors import Unauthorized
from deskbroker.services import agents
from deskbroker.store.tables import Desktop
from tests.helpers import Api
from tests.races import raised_while_desktop_held


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
    outcome = raised_while_desktop_held(
        ctx,
        desktop,
        lambda: agents.refresh(ctx, desktop, "a-guess"),
        "a wrong secret waited for the desktop's row",
    )
    assert [type(e) for e in outcome] == [Unauthorized]
    # The right one still buys a token.
    assert agents.refresh(ctx, desktop, "the-right-secret").token
    with pytest.raises(Unauthorized):
        agents.refresh(ctx, desktop, "the-right-secret")  # once: the secret was replaced
