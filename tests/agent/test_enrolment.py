"""Enrolment without hands: a pool of engine-built desktops enrols from the metadata
service alone; secrets that are reused, foreign or expired are refused; a credential
speaks only for its own desktop, rotates when the desktop changes hands, and a silent
agent becomes ``lost``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudsim.server import CloudSim
from deskbroker.bootstrap import add_local_user
from deskbroker.engine.runner import Engine
from deskbroker.services import agents
from deskbroker_agent.identity import discover
from tests.agent.conftest import built_pool
from tests.agent_process import AgentProcess, LiveBroker
from tests.desktop_agent import events_of
from tests.helpers import USER_PASSWORD, Api, wait_until
from tests.identity.directories import free_port

ENROL = "/api/v1/agent/enrol"
POOL_SIZE = 100


@pytest.fixture(scope="module")
def plain_sim() -> Iterator[CloudSim]:
    simulator = CloudSim(
        projects=["demo"],
        clock_speed=40.0,
        quota={"instances": 500, "cores": 2000, "ram": 10_000_000},
    ).start()
    yield simulator
    simulator.stop()


def _post(api: Api, path: str, body: dict[str, Any], token: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return api.client.post(f"/api/v1/agent/{path}", json=body, headers=headers)


def _identity(sim: CloudSim, desktop: dict[str, Any]) -> Any:
    # What the agent on that instance learns: the metadata service knows it by address.
    return discover(sim.metadata_url, source_address=desktop["address"])


def test_a_pool_of_engine_built_desktops_enrols_with_no_admin_action(
    api: Api, plain_sim: CloudSim, engine: Engine
) -> None:
    plain_sim.reset()
    desktops = built_pool(api, plain_sim, engine, POOL_SIZE, users=2)
    found = {d["id"]: _identity(plain_sim, d) for d in desktops}
    assert all(i.enrol_secret.startswith("dbe1.") for i in found.values())
    last = desktops[-1]

    # Refused before the real enrolment: an expired secret, one another tenant's key
    # signed, and this desktop's secret presented by another instance.
    tenant = api.get(f"desktops/{last['id']}")["tenant_id"]
    expired = api.ctx.signer.enrolment_secret(
        desktop_id=last["id"], tenant_id=tenant, expires_at=int(time.time()) - 5
    )
    answer = _post(api, "enrol", {"secret": expired})
    assert answer.status_code == 401 and "expired" in answer.json()["detail"]
    other_tenant = api.post("tenants", {"name": "acme"})["id"]
    foreign = api.ctx.signer.enrolment_secret(
        desktop_id=last["id"], tenant_id=other_tenant, expires_at=int(time.time()) + 600
    )
    answer = _post(api, "enrol", {"secret": foreign})
    assert answer.status_code == 401 and "not issued by this broker" in answer.json()["detail"]
    elsewhere = found[desktops[0]["id"]]
    answer = _post(
        api,
        "enrol",
        {"secret": found[last["id"]].enrol_secret, "identity": elsewhere.as_report()},
    )
    assert answer.status_code == 403 and last["name"] in answer.json()["detail"]
    assert api.get(f"desktops/{last['id']}")["agent_state"] == "unknown"

    started = time.monotonic()
    credentials: dict[str, dict[str, Any]] = {}
    for desktop in desktops:
        identity = found[desktop["id"]]
        answer = _post(
            api, "enrol", {"secret": identity.enrol_secret, "identity": identity.as_report()}
        )
        assert answer.status_code == 200, answer.text
        credentials[desktop["id"]] = answer.json()
    took = time.monotonic() - started
    assert {c["desktop_id"] for c in credentials.values()} == set(found)
    states = {d["agent_state"] for d in api.get("desktops?limit=1000")["items"]}
    assert states == {"running"}
    enrolled = [e for e in api.get("events?kind=agent.enrolled&limit=1000")["items"]]
    assert len(enrolled) == POOL_SIZE, f"{len(enrolled)} enrolments in {took:.1f} s"

    # A secret is single-use.
    again = _post(api, "enrol", {"secret": found[last["id"]].enrol_secret})
    assert again.status_code == 401 and "used already" in again.json()["detail"]

    # A credential speaks for its own desktop only: 403, and nothing changed.
    a, b = desktops[0]["id"], desktops[1]["id"]
    token_a = credentials[a]["token"]
    crossed = _post(api, "events", {"event": "login", "user": "user0", "desktop_id": b}, token_a)
    assert crossed.status_code == 403, crossed.text
    assert api.get(f"sessions?desktop_id={b}")["items"] == []
    assert events_of(api, b, "session.") == []
    # Its heartbeat cannot answer another desktop's actions either.
    beat = _post(api, "heartbeat", {"done": [{"id": b, "ok": True}]}, token_a)
    assert beat.status_code == 200 and beat.json()["desktop_id"] == a


def test_the_credential_rotates_when_the_desktop_changes_hands(
    api: Api, plain_sim: CloudSim, engine: Engine
) -> None:
    plain_sim.reset()
    [desktop] = built_pool(api, plain_sim, engine, 1, users=2)
    identity = _identity(plain_sim, desktop)
    cred = _post(
        api, "enrol", {"secret": identity.enrol_secret, "identity": identity.as_report()}
    ).json()
    token, refresh = cred["token"], cred["refresh_secret"]
    assert api.login("user0")["offers"][0]["desktop"]["id"] == desktop["id"]
    beat = _post(api, "heartbeat", {}, token).json()
    assert beat["assigned_user"] == "user0" and beat["actions"] == []
    assert (
        _post(api, "events", {"event": "login", "user": "user0", "seq": 1}, token).status_code
        == 200
    )
    _post(api, "events", {"event": "logout", "user": "user0", "seq": 2}, token)
    # The desktop changes hands: the token a past holder could have copied is dead.
    api.delete(f"assignments/{desktop['id']}")
    stale = _post(api, "heartbeat", {}, token)
    assert stale.status_code == 401 and "revoked" in stale.json()["detail"]
    # The agent's refresh secret (root-only on the machine) buys a new token, once.
    fresh = _post(api, "token", {"desktop_id": desktop["id"], "refresh_secret": refresh})
    assert fresh.status_code == 200, fresh.text
    assert _post(api, "heartbeat", {}, fresh.json()["token"]).status_code == 200
    reused = _post(api, "token", {"desktop_id": desktop["id"], "refresh_secret": refresh})
    assert reused.status_code == 401
    assert _post(api, "heartbeat", {}, token).status_code == 401


def test_a_silent_agent_becomes_lost_and_comes_back(
    api: Api, plain_sim: CloudSim, engine: Engine
) -> None:
    plain_sim.reset()
    [desktop] = built_pool(api, plain_sim, engine, 1)
    identity = _identity(plain_sim, desktop)
    token = _post(
        api, "enrol", {"secret": identity.enrol_secret, "identity": identity.as_report()}
    ).json()["token"]
    now = datetime.now(UTC)
    assert agents.mark_lost(api.ctx, now).marked == []  # it just spoke
    later = now + timedelta(seconds=api.ctx.settings.agent_lost_after_s + 1)
    assert agents.mark_lost(api.ctx, later).marked == [desktop["id"]]
    assert api.get(f"desktops/{desktop['id']}")["agent_state"] == "lost"
    assert [e["kind"] for e in events_of(api, desktop["id"], "agent.lost")] == ["agent.lost"]
    assert _post(api, "heartbeat", {"queued": 3}, token).status_code == 200
    assert api.get(f"desktops/{desktop['id']}")["agent_state"] == "running"
    [back] = events_of(api, desktop["id"], "agent.back")
    assert back["detail"]["queued"] == 3


def test_a_machine_the_broker_did_not_build_enrols_with_an_admin_secret(
    api: Api, tmp_path: Path
) -> None:
    api.seed_pool(2)
    desktops = {d["name"]: d["id"] for d in api.get("desktops")["items"]}
    static = desktops["lab-000"]
    issued = api.post(f"desktops/{static}/enrolment-secret", {})
    assert issued["secret"].startswith("dba1.") and issued["desktop_name"] == "lab-000"
    # Another tenant's admin cannot mint one for it.
    api.post("tenants", {"name": "acme"})
    add_local_user(api.ctx, "acme-admin", USER_PASSWORD, role="tenant_admin", tenant_name="acme")
    other = api.client.post(
        "/api/v1/auth/login",
        json={"username": "acme-admin", "password": USER_PASSWORD, "tenant": "acme"},
    ).json()["token"]
    hidden = api.client.post(
        f"/api/v1/admin/desktops/{static}/enrolment-secret",
        headers={"Authorization": f"Bearer {other}"},
    )
    assert hidden.status_code == 404
    # The real agent, configured with it, on a machine without a metadata service.
    broker = LiveBroker(api.ctx).start()
    try:
        agent = AgentProcess(
            tmp_path / "static",
            {
                "broker_url": broker.url,
                "enrolment_token": issued["secret"],
                "metadata_url": f"http://127.0.0.1:{free_port()}",
                "sources": "none",
                "heartbeat_s": 0.5,
                "poll_s": 0.2,
                "retry_s": 0.2,
            },
        ).start()
        try:
            wait_until(
                lambda: api.get(f"desktops/{static}")["agent_state"] == "running",
                "the static machine's agent to enrol",
                timeout_s=30,
            )
        finally:
            agent.stop()
    finally:
        broker.stop()
    [enrolled] = events_of(api, static, "agent.enrolled")
    assert enrolled["detail"]["identity"]["instance"] == ""  # the host, not a metadata service
    again = _post(api, "enrol", {"secret": issued["secret"]})
    assert again.status_code == 401 and "used already" in again.json()["detail"]
    # An engine-kind secret cannot be made from an admin one: the kind is signed too.
    forged = "dbe1." + issued["secret"].removeprefix("dba1.")
    assert _post(api, "enrol", {"secret": forged}).status_code == 401


def test_the_claim_passes_over_lost_agents_when_the_policy_says_so(api: Api) -> None:
    api.seed_pool(2, users=2)
    by_name = {d["name"]: d["id"] for d in api.get("desktops")["items"]}
    # lab-000 (the claim's first choice by name) has an agent that went silent.
    issued = api.post(f"desktops/{by_name['lab-000']}/enrolment-secret", {})
    assert _post(api, "enrol", {"secret": issued["secret"]}).status_code == 200
    later = datetime.now(UTC) + timedelta(seconds=api.ctx.settings.agent_lost_after_s + 1)
    assert agents.mark_lost(api.ctx, later).marked == [by_name["lab-000"]]
    api.patch(
        f"policies/{api.ids['policy']}",
        {"entries": [{"pool_id": api.ids["pool"], "ordering": "name", "skip_lost_agents": True}]},
    )
    entry = api.get(f"policies/{api.ids['policy']}")["entries"][0]
    assert entry["skip_lost_agents"] is True
    assert api.login("user0")["offers"][0]["desktop"]["name"] == "lab-001"
    # Without the flag the lost desktop is handed out like any other.
    api.patch(
        f"policies/{api.ids['policy']}",
        {"entries": [{"pool_id": api.ids["pool"], "ordering": "name"}]},
    )
    assert api.login("user1")["offers"][0]["desktop"]["name"] == "lab-000"


def test_a_queued_user_is_handed_only_desktops_whose_agent_lives(api: Api) -> None:
    api.seed_pool(2, users=3)
    by_name = {d["name"]: d["id"] for d in api.get("desktops")["items"]}
    api.patch(
        f"policies/{api.ids['policy']}",
        {"entries": [{"pool_id": api.ids["pool"], "ordering": "name", "skip_lost_agents": True}]},
    )
    assert api.login("user0")["offers"][0]["desktop"]["name"] == "lab-000"
    assert api.login("user1")["offers"][0]["desktop"]["name"] == "lab-001"
    waiting = api.login("user2")["offers"][0]
    assert waiting["status"] == "queued"
    # lab-000's agent goes silent, then lab-000 comes free: the ticket, taken under
    # skip_lost_agents, must not be served with it.
    issued = api.post(f"desktops/{by_name['lab-000']}/enrolment-secret", {})
    assert _post(api, "enrol", {"secret": issued["secret"]}).status_code == 200
    later = datetime.now(UTC) + timedelta(seconds=api.ctx.settings.agent_lost_after_s + 1)
    assert agents.mark_lost(api.ctx, later).marked == [by_name["lab-000"]]
    api.delete(f"assignments/{by_name['lab-000']}")
    assert api.get(f"desktops/{by_name['lab-000']}")["assigned_user_id"] is None
    assert len(api.get(f"pools/{api.ids['pool']}/queue")["items"]) == 1
    # A desktop with a live (here: never enrolled, so not lost) agent serves the ticket.
    api.delete(f"assignments/{by_name['lab-001']}")
    user2 = api.get("users?username=user2")["items"][0]["id"]
    assert api.get(f"desktops/{by_name['lab-001']}")["assigned_user_id"] == user2
    assert api.get(f"pools/{api.ids['pool']}/queue")["items"] == []
