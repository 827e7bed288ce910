"""Two releases of one desktop at once (a double click): one releases it, the other is
told the desktop is no longer theirs. Read without a check (on PostgreSQL each statement
sees its own moment), both went on: two ``release`` events (webhooks fired twice) and
the pool's release interval moved twice. On SQLite the one writer serialises the two;
the test holds there too."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from deskbroker.services import desktops
from deskbroker.store.tables import Event
from tests.helpers import Api, bearer
from tests.races import Seam, while_held


def test_two_releases_at_once_release_once(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api.seed_pool(1, users=1)
    signed = api.login("user0")
    [offer] = signed["offers"]
    desktop = offer["desktop"]["id"]

    # The first release, just after it read the desktop (the app runs routes on
    # threads of its own, so it is told by its order).
    seam = Seam(first_only=True)
    seam.after(monkeypatch, desktops.desktop_rows, "of_tenant")
    answers: list[httpx.Response] = []

    def release() -> None:
        answers.append(
            api.client.post(
                f"/api/v1/client/desktops/{desktop}/release", headers=bearer(signed["token"])
            )
        )

    # On PostgreSQL the second commits while the first is between its read and write.
    while_held(seam, release, release, other_ends_first=api.ctx.db.is_postgres)

    # The second is answered as a release after the first would be.
    assert sorted(a.status_code for a in answers) == [204, 404], [a.text for a in answers]
    [refused] = [a for a in answers if a.status_code == 404]
    assert "is not assigned to you" in refused.json()["detail"]
    with api.ctx.db.read() as session:
        released = session.scalar(
            select(func.count()).select_from(Event).where(Event.kind == "release")
        )
    assert released == 1
