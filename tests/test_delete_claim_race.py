"""An administrator's delete of a free desktop (or of its center) and a user's claim of
it, at once: the delete locks the row before it judges it, so the claim either took it
first (the delete is refused: assigned) or passes it over (the claim skips a locked
row). Read without the lock, the delete judged a desktop free that a claim had just
given a user, and forgot it (or marked it for termination) under them: on PostgreSQL
each statement sees its own moment. On SQLite the one writer serialises the two; the
tests hold there too."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from deskbroker.bootstrap import add_local_user
from deskbroker.services import desktop_removal
from deskbroker.store import references
from deskbroker.store.tables import Desktop
from tests.helpers import USER_PASSWORD, Api
from tests.races import Seam, while_held


def _delete_while_user0_signs_in(
    api: Api, seam: Seam, path: str
) -> tuple[dict[str, Any], httpx.Response]:
    """An administrator's ``DELETE path``, held at ``seam``, while user0 signs in (the
    claim passes a locked row over: on PostgreSQL it ends first)."""
    deleting: dict[str, Any] = {}
    signed: dict[str, httpx.Response] = {}

    def delete() -> None:
        answer = api.client.delete(f"/api/v1/admin/{path}", headers=api.headers)
        deleting.update(status=answer.status_code, body=answer.text)

    def sign_in() -> None:
        signed["answer"] = api.client.post(
            "/api/v1/auth/login", json={"username": "user0", "password": USER_PASSWORD}
        )

    while_held(seam, delete, sign_in, other_ends_first=api.ctx.db.is_postgres)
    assert signed["answer"].status_code == 200, signed["answer"].text
    return deleting, signed["answer"]


def test_a_desktop_deleted_while_a_user_claims_it_is_never_taken_from_the_user(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = api.seed_pool(1, users=1)
    [desktop] = api.get(f"pools/{ids['pool']}/members")["items"]
    # Just after the delete read the desktop (the app runs the route on a thread of its
    # own; the delete is the only caller here).
    seam = Seam(first_only=True)
    seam.after(monkeypatch, desktop_removal.standing, "check_reach")
    deleting, answer = _delete_while_user0_signs_in(api, seam, f"desktops/{desktop['id']}")

    offers = answer.json()["offers"]
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


def test_a_center_deleted_while_a_user_claims_its_desktop_never_takes_it_from_the_user(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pool of filters alone: it names no center, so the center's delete is not
    # refused for it, and its users claim the center's desktops all the same.
    center = api.post(
        "centers",
        {
            "name": "gold-center",
            "kind": "static",
            "params": {"machines": [{"name": "gold-1", "address": "127.0.1.9"}]},
        },
    )
    pool = api.post(
        "pools",
        {"name": "gold", "filters": [{"attribute": "name", "op": "begins_with", "value": "gold-"}]},
    )
    policy = api.post("policies", {"name": "gold", "entries": [{"pool_id": pool["id"]}]})
    api.post(
        "assignment-rules",
        {"identity_source_id": api.source_id(), "name": "everyone", "policy_id": policy["id"]},
    )
    add_local_user(api.ctx, "user0", USER_PASSWORD)
    assert [m["name"] for m in api.get(f"pools/{pool['id']}/members")["items"]] == ["gold-1"]
    # Just after the delete found no desktop of the center assigned.
    seam = Seam(first_only=True)
    seam.after(monkeypatch, references, "assigned_desktop_of_center")
    deleting, answer = _delete_while_user0_signs_in(api, seam, f"centers/{center['id']}")

    given = [o for o in answer.json()["offers"] if o["status"] == "assigned"]
    with api.ctx.db.read() as session:
        assigned_now = Desktop.assigned_user_id.is_not(None)
        held = session.scalars(select(Desktop.id).where(assigned_now)).all()
    assert {o["desktop"]["id"] for o in given} == set(held)
    if given:
        assert deleting["status"] == 409 and "assigned" in deleting["body"], deleting
    else:
        assert deleting["status"] in (200, 204), deleting
