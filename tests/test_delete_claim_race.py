"""An administrator's delete of a free desktop and a user's claim of it, at once: the
delete locks the row before it judges it, so the claim either took it first (the delete
is refused: assigned) or passes it over (the claim skips a locked row). Read without the
lock, the delete judged a desktop free that a claim had just given a user, and forgot it
(or marked it for termination) under them: on PostgreSQL each statement sees its own
moment. On SQLite the one writer serialises the two; the test holds there too."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from deskbroker.services import desktop_removal
from deskbroker.store.tables import Desktop
from tests.helpers import USER_PASSWORD, Api


def test_a_desktop_deleted_while_a_user_claims_it_is_never_taken_from_the_user(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = api.seed_pool(1, users=1)
    [desktop] = api.get(f"pools/{ids['pool']}/members")["items"]

    read, go_on = threading.Event(), threading.Event()
    real = desktop_removal.standing.check_reach
    deleting: dict[str, Any] = {}

    def check_reach(*args: Any) -> None:
        # Just after the delete read the desktop: hold it there (the app runs the route
        # on a thread of its own; the delete is the only caller here).
        real(*args)
        read.set()
        assert go_on.wait(30), "never told to go on"

    monkeypatch.setattr(desktop_removal.standing, "check_reach", check_reach)

    def delete() -> None:
        answer = api.client.delete(f"/api/v1/admin/desktops/{desktop['id']}", headers=api.headers)
        deleting.update(status=answer.status_code, body=answer.text)

    remover = threading.Thread(target=delete)
    remover.start()
    assert read.wait(30)
    signed: dict[str, httpx.Response] = {}
    login = threading.Thread(
        target=lambda: signed.update(
            answer=api.client.post(
                "/api/v1/auth/login", json={"username": "user0", "password": USER_PASSWORD}
            )
        )
    )
    login.start()
    if api.ctx.db.is_postgres:
        # The claim does not wait for the delete: it passes the locked row over.
        login.join(30)
        assert not login.is_alive()
    go_on.set()
    remover.join(30)
    login.join(30)
    assert not remover.is_alive() and not login.is_alive()

    assert signed["answer"].status_code == 200, signed["answer"].text
    offers = signed["answer"].json()["offers"]
    given = [o["desktop"]["id"] for o in offers if o["status"] == "assigned"]
    with api.ctx.db.read() as session:
        held = session.execute(
            select(Desktop.id, Desktop.power_state, Desktop.delete_requested_at).where(
                Desktop.assigned_user_id.is_not(None)
            )
        ).all()
    # Whatever won, no user holds a desktop that is gone or going.
    for _, power, asked in held:
        assert power not in ("deleting", "deleted") and asked is None, held
    assert set(given) == {row[0] for row in held}
    if given:
        assert deleting["status"] == 409 and "is assigned" in deleting["body"], deleting
    else:
        assert deleting["status"] in (200, 204), deleting
