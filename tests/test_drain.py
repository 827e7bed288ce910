"""Drain: a desktop, pool or center out of the claim, sessions in progress untouched."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from deskbroker.bootstrap import add_local_user
from deskbroker.domain.plans import AgentEvent
from deskbroker.services import sessions
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import AgentAction, Desktop, SessionRow
from tests.helpers import ADMIN_PASSWORD, Api


def _desktop_of(api: Api, user: str) -> str | None:
    offer = api.login(user)["offers"][0]
    return offer["desktop"]["id"] if offer["status"] == "assigned" else None


def _holders(ctx: BrokerContext) -> dict[str, str | None]:
    with ctx.db.read() as session:
        rows = session.execute(select(Desktop.name, Desktop.assigned_user_id)).all()
        return {name: user for name, user in rows}


def test_drained_desktop_pool_and_center_are_never_claimed_and_sessions_go_on(
    api: Api, ctx: BrokerContext
) -> None:
    ids = api.seed_pool(4, users=5)
    pool, center = ids["pool"], ids["center"]
    first = _desktop_of(api, "user0")
    assert first is not None
    sessions.record(ctx, first, AgentEvent.LOGIN, user="user0", session_key="s0")
    desktops = {d["name"]: d["id"] for d in api.get("desktops")["items"]}
    spare = next(i for n, i in sorted(desktops.items()) if i != first)

    # A drained desktop: never given, even when it is the last free one.
    out = api.post(f"desktops/{spare}/drain", {}, status=200)
    assert out["drained"] and out["kind"] == "desktop" and out["messages"] == 0
    assert api.get(f"desktops/{spare}")["drained_at"] is not None
    assert {_desktop_of(api, u) for u in ("user1", "user2")}.isdisjoint({spare, None})
    assert _desktop_of(api, "user3") is None, "the drained desktop was the only one left"
    assert _holders(ctx)[next(n for n, i in desktops.items() if i == spare)] is None

    # The pool drained with a message: the session in progress is told, not touched.
    out = api.post(f"pools/{pool}/drain", {"message": "maintenance at 18:00"}, status=200)
    assert (out["desktops"], out["sessions_in_progress"], out["messages"]) == (4, 1, 1)
    with ctx.db.read() as session:
        action = session.scalars(select(AgentAction)).one()
        row = session.scalars(select(SessionRow)).one()
    assert (action.kind, action.message, action.desktop_id) == (
        "message",
        "maintenance at 18:00",
        first,
    )
    assert row.state == "logged_in" and row.ended_at is None
    # Draining again changes nothing and tells nobody twice.
    again = api.post(f"pools/{pool}/drain", {"message": "again"}, status=200)
    assert again["messages"] == 0 and again["drained_at"] == out["drained_at"]
    status = api.get(f"pools/{pool}/status")
    assert status["counts"]["drained"] == 4 and status["counts"]["available"] == 0
    assert status["summary"].startswith("drained") and status["drained_at"]
    assert api.get(f"pools/{pool}")["drained_at"] is not None
    # Existing assignments keep working: user0 signs in again to the same desktop.
    assert _desktop_of(api, "user0") == first
    assert _desktop_of(api, "user4") is None  # queued, not given a desktop

    # Undrained with the desktop still drained: nobody gets the spare yet.
    out = api.post(f"pools/{pool}/undrain", {}, status=200)
    assert not out["drained"] and api.get(f"pools/{pool}/status")["counts"]["drained"] == 1
    assert api.get("assignments?limit=1")["total"] == 3

    # Undraining the desktop served the first user waiting (user3) with it.
    api.post(f"desktops/{spare}/undrain", {}, status=200)
    assert api.get(f"desktops/{spare}")["assigned_user_id"] is not None

    # The center drained: a desktop released meanwhile goes to nobody.
    api.post(f"centers/{center}/drain", {}, status=200)
    assert api.get(f"centers/{center}")["drained_at"] is not None
    api.delete(f"assignments/{_assignment_of(api, 'user1')}")
    counts = api.get(f"pools/{pool}/status")["counts"]
    assert (counts["drained"], counts["available"], counts["queued"]) == (4, 0, 1)
    assert _desktop_of(api, "user4") is None
    assert api.get("assignments?limit=1")["total"] == 3
    # The user waiting (user4) is served once the center is back.
    out = api.post(f"centers/{center}/undrain", {}, status=200)
    assert "1 waiting users got a desktop" in out["message"]
    assert api.get("assignments?limit=1")["total"] == 4
    assert _desktop_of(api, "user4") is not None
    events = {e["kind"] for e in api.get("events?limit=200")["items"]}
    assert {"admin.drain", "admin.undrain"} <= events


def _assignment_of(api: Api, username: str) -> str:
    user = next(u for u in api.get("users")["items"] if u["username"] == username)
    found: list[dict[str, Any]] = api.get("assignments")["items"]
    return next(a["desktop_id"] for a in found if a["user_id"] == user["id"])


def test_a_tenant_admin_cannot_drain_another_tenants_objects(api: Api, ctx: BrokerContext) -> None:
    ids = api.seed_pool(2, users=1)
    desktop = api.get("desktops")["items"][0]["id"]
    add_local_user(ctx, "boss-b", ADMIN_PASSWORD, role="tenant_admin", tenant_name="b")
    ctx.cache.invalidate()
    response = api.client.post(
        "/api/v1/auth/login",
        json={"username": "boss-b", "password": ADMIN_PASSWORD, "tenant": "b"},
    )
    assert response.status_code == 200, response.text
    other = Api(api.client, ctx, response.json()["token"])
    for path in (f"pools/{ids['pool']}", f"centers/{ids['center']}", f"desktops/{desktop}"):
        for verb in ("drain", "undrain"):
            theirs = other.post(f"{path}/{verb}", {"message": "hi"}, status=404)
            made_up = other.post(f"{path.split('/')[0]}/{'0' * 32}/{verb}", {}, status=404)
            assert theirs["title"] == made_up["title"] and "does not exist" in theirs["detail"]
    assert api.get(f"pools/{ids['pool']}")["drained_at"] is None
    assert api.get(f"centers/{ids['center']}")["drained_at"] is None
    assert api.get(f"desktops/{desktop}")["drained_at"] is None
    assert _desktop_of(api, "user0") is not None
    # A bad body is a 422 in words, not a 500.
    too_long = api.post(f"pools/{ids['pool']}/drain", {"message": "x" * 1001}, status=422)
    assert "message" in too_long["detail"]
    api.post(f"pools/{ids['pool']}/drain", {"colour": "red"}, status=422)


def test_draining_what_a_stronger_account_gets_desktops_from_is_refused(api: Api) -> None:
    """The stronger-account rule: a tenant admin may not drain the pool or center the
    global admin (caught by the catch-all rule) gets desktops from; the global admin may."""
    ids = api.seed_pool(2)
    add_local_user(api.ctx, "tad", "user-password-1", role="tenant_admin")
    tad = Api(api.client, api.ctx, api.login("tad", "user-password-1")["token"])
    for path, named in (
        (f"pools/{ids['pool']}", "pool lab"),
        (f"centers/{ids['center']}", "center lab-center"),
    ):
        for verb in ("drain", "undrain"):
            detail = tad.post(f"{path}/{verb}", {}, status=403)["detail"]
            assert detail.startswith(f"only a global administrator can {verb} {named}"), detail
        assert api.get(path)["drained_at"] is None
    # Nor a desktop of that pool (tests/test_standing_reach.py); the global admin may.
    desktop = api.get("desktops")["items"][0]["id"]
    tad.post(f"desktops/{desktop}/drain", {}, status=403)
    assert api.post(f"desktops/{desktop}/drain", {}, status=200)["drained"]
    assert api.post(f"pools/{ids['pool']}/drain", {}, status=200)["drained"]
