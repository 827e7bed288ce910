"""The stronger-account rule on what a helpdesk does to running desktops: ending a
session, sending it a message, locking or logging it off, and stopping or rebooting the
machine. A tenant administrator who may not release a global administrator's desktop
may not end that account's session either (its release plan would hand the desktop on
with the session still live), nor speak to it in the broker's name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from deskbroker.engine.drivers import DriverCache
from tests.desktop_agent import Agent, fire_due
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api
from tests.test_standing import _tenant_admin

ORDERS = ("message", "lock", "logoff")


def _session_of(api: Api, username: str) -> str:
    [found] = [s["id"] for s in api.get("sessions")["items"] if s["username"] == username]
    return str(found)


def test_a_tenant_admin_cannot_end_a_global_admins_session_to_take_the_desktop(
    api: Api,
) -> None:
    api.seed_pool(1, users=0, assignment="pooled")
    desk = api.login("admin", ADMIN_PASSWORD)["offers"][0]["desktop"]["id"]
    now = datetime.now(UTC)
    Agent.mint(api, desk).send("login", user="admin", at=now)
    tad = _tenant_admin(api)
    assert "release the desktop of admin" in tad.delete(f"assignments/{desk}", status=403)["detail"]
    session = _session_of(api, "admin")

    refused = tad.post(f"sessions/{session}/end", {"reason": "x"}, status=403)["detail"]
    assert "end the session on a desktop of admin, who can be global administrator" in refused
    # Nothing happened: the session is live, no release is due, the desktop stays.
    assert fire_due(api.ctx, DriverCache(api.ctx), now + timedelta(seconds=5)) == 0
    [held] = api.get("assignments")["items"]
    assert held["desktop_id"] == desk
    [live] = [s for s in api.get("sessions")["items"] if s["id"] == session]
    assert live["state"] == "logged_in"
    assert not api.get("events?kind=admin.session_end")["items"]

    for kind in ORDERS:
        body = (
            {"message": "re-enter your password at https://evil.example"}
            if kind == "message"
            else {}
        )
        detail = tad.post(f"sessions/{session}/{kind}", body, status=403)["detail"]
        assert "who can be global administrator" in detail, detail
    assert not api.get("events?kind=admin.session_message")["items"]
    for action in ("stop", "reboot", "suspend"):
        detail = tad.post(f"desktops/{desk}/power", {"action": action, "force": True}, status=403)[
            "detail"
        ]
        assert f"{action} a desktop of admin" in detail, detail

    # The global administrator may; so may anyone on a plain user's session.
    assert api.post(f"sessions/{session}/lock", {}, status=202)["kind"] == "lock"
    ended = api.post(f"sessions/{session}/end", {"reason": "helpdesk ticket 7"}, status=200)
    assert ended["state"] == "logged_out"


def test_a_tenant_admin_still_helps_plain_users(api: Api) -> None:
    api.seed_pool(1, users=1, assignment="persistent")
    desk = api.login("user0", USER_PASSWORD)["offers"][0]["desktop"]["id"]
    Agent.mint(api, desk).send("login", user="user0")
    tad = _tenant_admin(api)
    session = _session_of(api, "user0")
    for kind in ORDERS:
        body = {"message": "maintenance at noon"} if kind == "message" else {}
        assert tad.post(f"sessions/{session}/{kind}", body, status=202)["kind"] == kind
    # Past the check, the static center answers that it cannot power machines.
    assert (
        "cannot power machines"
        in tad.post(f"desktops/{desk}/power", {"action": "reboot", "force": True}, status=409)[
            "detail"
        ]
    )
    assert tad.post(f"sessions/{session}/end", {"reason": "stuck"}, status=200)["state"] == (
        "logged_out"
    )


def test_starting_a_global_admins_stopped_desktop_disturbs_nobody(api: Api) -> None:
    api.seed_pool(1, users=0, assignment="persistent")
    desk = api.login("admin", ADMIN_PASSWORD)["offers"][0]["desktop"]["id"]
    tad = _tenant_admin(api)
    # Not refused for the holder (the center's own answer comes instead).
    detail = tad.post(f"desktops/{desk}/power", {"action": "start"}, status=409)["detail"]
    assert "global administrator" not in detail, detail


def test_an_agent_naming_a_global_admin_does_not_shield_a_desktop(api: Api) -> None:
    """Whoever held a desktop may have read its agent token: a session the agent says is
    the global administrator's on a plain user's desktop is the agent's word only, and
    keeps no administrator from helping."""
    api.seed_pool(1, users=1, assignment="persistent")
    desk = api.login("user0", USER_PASSWORD)["offers"][0]["desktop"]["id"]
    Agent.mint(api, desk).send("login", user="admin", session_key="1")
    tad = _tenant_admin(api)
    session = _session_of(api, "admin")
    for kind in ("lock", "logoff"):
        assert tad.post(f"sessions/{session}/{kind}", {}, status=202)["kind"] == kind
    assert (
        "cannot power machines"
        in tad.post(f"desktops/{desk}/power", {"action": "stop", "force": True}, status=409)[
            "detail"
        ]
    )
    assert tad.post(f"sessions/{session}/end", {"reason": "x"}, status=200)["state"] == (
        "logged_out"
    )
