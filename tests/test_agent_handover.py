"""The desktop agent's credentials across a handover: what a past holder, who was root on
the desktop and copied the agent's state, can still do once the desktop changed hands."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from deskbroker.security import TokenClaims
from deskbroker.services import agents
from deskbroker.services.sessions import SEQ_JUMP_MAX
from deskbroker.store import claims
from deskbroker.store.tables import Desktop
from tests.desktop_agent import Agent, assigned_desktop, events_of
from tests.helpers import Api


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _enrol(api: Api, desktop_id: str) -> dict[str, Any]:
    secret = api.post(f"desktops/{desktop_id}/enrolment-secret", {})["secret"]
    answer = api.client.post("/api/v1/agent/enrol", json={"secret": secret})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _release(api: Api, username: str, desktop_id: str) -> None:
    token = api.login(username)["token"]
    released = api.client.post(
        f"/api/v1/client/desktops/{desktop_id}/release", headers=_bearer(token)
    )
    assert released.status_code == 204, released.text


def _refresh(api: Api, desktop_id: str, secret: str) -> Any:
    return api.client.post(
        "/api/v1/agent/token", json={"desktop_id": desktop_id, "refresh_secret": secret}
    )


def _beat(api: Api, token: str) -> int:
    return api.client.post("/api/v1/agent/heartbeat", json={}, headers=_bearer(token)).status_code


def test_an_administrators_new_token_voids_the_past_holders_refresh_secret(api: Api) -> None:
    api.seed_pool(1, users=2)
    desktop = assigned_desktop(api, "user0")
    copied = _enrol(api, desktop)["refresh_secret"]  # read by user0, root on the machine
    _release(api, "user0", desktop)
    assert assigned_desktop(api, "user1") == desktop
    installed = api.post(f"desktops/{desktop}/agent-token", {})["token"]
    stolen = _refresh(api, desktop, copied)
    assert stolen.status_code == 401, stolen.text
    # The administrator's token is the desktop's, and user0 never learns the new holder.
    assert _beat(api, installed) == 200


def test_after_a_release_the_refresh_secret_buys_a_token_only_at_the_agents_next_beat(
    api: Api,
) -> None:
    api.seed_pool(2, users=1)
    late = assigned_desktop(api, "user0")
    late_secret = _enrol(api, late)["refresh_secret"]
    _release(api, "user0", late)
    # The agent said nothing for longer than a live agent's silence: the machine was off
    # through the handover, or the secret is a copy used later. It enrols again.
    silent = datetime.now(UTC) - timedelta(seconds=api.ctx.settings.agent_lost_after_s + 5)
    with api.ctx.db.write() as session:
        row = session.get(Desktop, late)
        assert row is not None
        row.agent_seen_at = silent
    refused = _refresh(api, late, late_secret)
    assert refused.status_code == 401
    assert "changed hands while its agent was silent" in refused.json()["detail"]
    # The live agent refreshes at its next beat, and the log says it followed a release.
    live = assigned_desktop(api, "user0")
    live_secret = _enrol(api, live)["refresh_secret"]
    _release(api, "user0", live)
    fresh = _refresh(api, live, live_secret)
    assert fresh.status_code == 200, fresh.text
    assert _beat(api, fresh.json()["token"]) == 200
    [*_, token_event] = events_of(api, live, "agent.token")
    assert token_event["detail"]["after_release"] is True


def test_a_rogue_login_gives_nobody_more_desktops_than_the_pools_policy(api: Api) -> None:
    ids = api.seed_pool(2, users=2)
    entry = {"pool_id": ids["pool"], "assignment": "persistent", "rogue_users": "assign"}
    api.patch(f"policies/{ids['policy']}", {"entries": [entry]})
    held = assigned_desktop(api, "user0")
    [free] = [d["id"] for d in api.get("desktops")["items"] if d["id"] != held]
    # A token for the free desktop (an administrator's, or a past holder's refresh).
    Agent.mint(api, free).send("login", "user0", seq=1)
    [rogue] = events_of(api, free, "session.rogue")
    assert rogue["detail"]["outcome"] == "refused"
    assert "user0 holds 1 desktops" in rogue["detail"]["refused"]
    assert api.get(f"desktops/{free}")["assigned_user_id"] is None
    # Someone who holds nothing yet still gets it.
    agent = Agent.mint(api, free)
    agent.send("logout", "user0", seq=1)
    agent.send("login", "user1", seq=2)
    [*_, rogue] = events_of(api, free, "session.rogue")
    assert rogue["detail"]["outcome"] == "assigned"


def test_a_rogue_login_of_a_disabled_account_assigns_it_nothing(api: Api) -> None:
    ids = api.seed_pool(1, users=1)
    entry = {"pool_id": ids["pool"], "assignment": "persistent", "rogue_users": "assign"}
    api.patch(f"policies/{ids['policy']}", {"entries": [entry]})
    [desktop] = [d["id"] for d in api.get("desktops")["items"]]
    user = api.get("users?username=user0")["items"][0]
    api.patch(f"users/{user['id']}", {"disabled": True})
    Agent.mint(api, desktop).send("login", "user0", seq=1)
    [rogue] = events_of(api, desktop, "session.rogue")
    assert rogue["detail"]["outcome"] == "refused"
    assert "disabled" in rogue["detail"]["refused"]
    assert api.get(f"desktops/{desktop}")["assigned_user_id"] is None


def test_a_sequence_number_pushed_up_does_not_outlive_the_holding(api: Api) -> None:
    api.seed_pool(1, users=2)
    desktop = assigned_desktop(api, "user0")
    past = Agent.mint(api, desktop)  # the token user0 reads on the machine
    past.send("login", "user0", seq=2**62)
    past.send("logout", "user0")
    _release(api, "user0", desktop)
    assert assigned_desktop(api, "user1") == desktop
    real = Agent.mint(api, desktop)
    assert not real.send("login", "user1", seq=1)["ignored"]
    assert not real.send("logout", "user1", seq=2)["ignored"]


def test_an_administrators_new_token_restarts_the_sequence(api: Api) -> None:
    api.seed_pool(1, users=1)
    desktop = assigned_desktop(api, "user0")
    Agent.mint(api, desktop).send("login", "user0", seq=500)
    assert not Agent.mint(api, desktop).send("logout", "user0", seq=1)["ignored"]


def test_a_sequence_number_may_not_leap_ahead(api: Api) -> None:
    api.seed_pool(1, users=1)
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    agent.send("login", "user0", seq=7)
    leap = agent.send("logout", "user0", seq=7 + SEQ_JUMP_MAX + 1, status=422)
    assert "jumps more than" in leap["detail"]
    assert agent.send("logout", "user0", seq=8)["state"] == "logged_out"


def test_an_enrolment_secret_works_once_and_a_new_one_does_not_revive_it(api: Api) -> None:
    api.seed_pool(1, users=1)
    desktop = assigned_desktop(api, "user0")
    first = api.post(f"desktops/{desktop}/enrolment-secret", {})["secret"]

    def enrol(secret: str) -> int:
        return api.client.post("/api/v1/agent/enrol", json={"secret": secret}).status_code

    assert enrol(first) == 200
    assert enrol(first) == 401
    second = api.post(f"desktops/{desktop}/enrolment-secret", {})["secret"]
    assert enrol(first) == 401
    assert enrol(second) == 200
    assert enrol(second) == 401


def test_an_engine_secret_needs_the_instance_it_was_made_for(api: Api) -> None:
    api.seed_pool(1)
    [row] = api.get("desktops")["items"]
    with api.ctx.db.write() as session:
        desktop = session.get(Desktop, row["id"])
        assert desktop is not None
        desktop.external_id = "4f7b2b1e-0d1c-4c55-9d57-5b0c8a1f0001"
    secret = agents.enrolment_secret(api.ctx, row["id"], row["tenant_id"])

    def enrol(identity: dict[str, str]) -> Any:
        return api.client.post("/api/v1/agent/enrol", json={"secret": secret, "identity": identity})

    nameless = enrol({"hostname": "lab-001"})
    assert nameless.status_code == 403
    assert "names no instance" in nameless.json()["detail"]
    assert enrol({"instance": "another"}).status_code == 403
    assert enrol({"instance": "4f7b2b1e-0d1c-4c55-9d57-5b0c8a1f0001"}).status_code == 200


def test_a_release_during_a_heartbeat_is_not_undone_by_its_new_token(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.seed_pool(1, users=1)
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    # The token is past half its life, so this beat would bring a replacement.
    later = time.time() + api.ctx.settings.agent_token_ttl_s * 0.75
    monkeypatch.setattr(agents, "time", SimpleNamespace(time=lambda: later))
    checked = agents.check_agent

    def released_meanwhile(ctx: Any, who: TokenClaims, desktop_id: str | None) -> str:
        # The release lands between the token's check and the row's lock.
        found = checked(ctx, who, desktop_id)
        with ctx.db.write() as session:
            assert claims.unassign(session, desktop_id=desktop, user_id=None)
        return found

    monkeypatch.setattr(agents, "check_agent", released_meanwhile)
    beat = api.client.post("/api/v1/agent/heartbeat", json={}, headers=_bearer(agent.token))
    assert beat.status_code == 401, beat.text
    assert "revoked when the desktop was released" in beat.json()["detail"]
    with api.ctx.db.read() as session:
        row = session.get(Desktop, desktop)
        assert row is not None and row.agent_token_id is None
