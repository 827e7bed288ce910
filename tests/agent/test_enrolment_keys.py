"""Tenant enrolment keys: machines the broker did not build enrol with a tenant's key,
matched to their desktop row by instance id or address, or held for an administrator's
approval; keys and poll handles are secrets (hashed, shown once, never logged) and a
tenant's key reaches nothing of another tenant."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import update

from deskbroker.bootstrap import add_local_user
from deskbroker.store.tables import EnrolmentKey, PendingEnrolment
from deskbroker_agent.broker import BrokerClient, Credential
from deskbroker_agent.config import AgentConfig
from deskbroker_agent.identity import Identity
from tests.agent_process import AgentProcess, LiveBroker
from tests.desktop_agent import enrol_by_key, events_of, poll_enrolment
from tests.helpers import USER_PASSWORD, Api, wait_until
from tests.identity.directories import free_port


def _event(api: Api, token: str, user: str = "user0") -> httpx.Response:
    return api.client.post(
        "/api/v1/agent/events",
        json={"event": "login", "user": user},
        headers={"Authorization": f"Bearer {token}"},
    )


def _other_tenant_admin(api: Api, name: str = "acme") -> Api:
    api.post("tenants", {"name": name})
    add_local_user(api.ctx, f"{name}-admin", USER_PASSWORD, role="tenant_admin", tenant_name=name)
    token = api.client.post(
        "/api/v1/auth/login",
        json={"username": f"{name}-admin", "password": USER_PASSWORD, "tenant": name},
    ).json()["token"]
    return Api(api.client, api.ctx, token)


def test_a_key_enrols_the_machine_its_address_names_and_is_never_shown_again(api: Api) -> None:
    api.seed_pool(3)
    desktops = {d["name"]: d for d in api.get("desktops")["items"]}
    made = api.post("enrolment-keys", {"name": "golden-image", "expires_in_days": 30})
    key = made["key"]
    assert key.startswith("dbk1.") and made["prefix"] == key[: len(made["prefix"])]
    assert made["expires_at"] is not None
    # Listed without the key; the event log and the table hold no trace of it.
    [listed] = api.get("enrolment-keys")["items"]
    assert "key" not in listed and listed["name"] == "golden-image"
    assert key not in json.dumps(api.get("events?limit=500"))
    with api.ctx.db.read() as session:
        stored = session.get(EnrolmentKey, made["id"])
        assert stored is not None and key not in repr(vars(stored))
    # A second key of the same name is refused in words.
    assert "exists already" in api.post("enrolment-keys", {"name": "golden-image"}, 409)["detail"]

    got = enrol_by_key(api, key, hostname="lab-001", addresses=["10.9.9.9", "127.0.1.2"])
    assert got.status_code == 200, got.text
    assert got.json()["desktop_name"] == "lab-001"
    assert _event(api, got.json()["token"]).status_code == 200
    [enrolled] = events_of(api, desktops["lab-001"]["id"], "agent.enrolled")
    assert enrolled["detail"]["how"] == "key golden-image"

    # The same machine again: the desktop's agent enrolled already, so a key holder cannot
    # take it over; held for an administrator instead.
    again = enrol_by_key(api, key, addresses=["127.0.1.2"])
    assert again.status_code == 202, again.text
    assert again.headers["Retry-After"] == str(again.json()["retry_after_s"])
    assert "has an enrolled agent already" in again.json()["detail"]
    # ...and the desktop's agent keeps working meanwhile.
    beat = api.client.post(
        "/api/v1/agent/heartbeat",
        json={},
        headers={"Authorization": f"Bearer {got.json()['token']}"},
    )
    assert beat.status_code == 200, beat.text


def test_a_held_enrolment_waits_for_approval_and_collects_once(api: Api) -> None:
    api.seed_pool(2)
    desktops = {d["name"]: d["id"] for d in api.get("desktops")["items"]}
    key = api.post("enrolment-keys", {"name": "imported"})["key"]
    held = enrol_by_key(api, key, instance="not-a-known-instance", addresses=["192.0.2.50"])
    assert held.status_code == 202, held.text
    handle = held.json()["poll_handle"]
    assert handle.startswith("dbp1.") and handle not in json.dumps(api.get("events?limit=500"))
    assert poll_enrolment(api, handle).status_code == 202
    [waiting] = api.get("pending-enrolments?state=pending")["items"]
    assert waiting["id"] == held.json()["pending_id"]
    assert waiting["identity"]["instance"] == "not-a-known-instance"
    assert "no desktop of the tenant matches instance not-a-known-instance" in waiting["reason"]

    # Approving for a desktop that does not exist is refused and decides nothing.
    api.post(f"pending-enrolments/{waiting['id']}/approve", {"desktop_id": "nope"}, 422)
    approved = api.post(
        f"pending-enrolments/{waiting['id']}/approve", {"desktop_id": desktops["lab-000"]}, 200
    )
    assert approved["state"] == "approved" and approved["desktop_id"] == desktops["lab-000"]
    assert (
        "decided already" in api.post(f"pending-enrolments/{waiting['id']}/deny", {}, 409)["detail"]
    )
    got = poll_enrolment(api, handle)
    assert got.status_code == 200, got.text
    assert got.json()["desktop_name"] == "lab-000"
    assert _event(api, got.json()["token"]).status_code == 200
    # Once: the credential is not handed out a second time.
    assert poll_enrolment(api, handle).status_code == 410
    assert api.get("pending-enrolments")["items"][0]["state"] == "collected"
    [enrolled] = events_of(api, desktops["lab-000"], "agent.enrolled")
    assert enrolled["detail"]["how"] == "approval"


def test_denied_expired_revoked_and_made_up_are_refused(api: Api) -> None:
    api.seed_pool(1)
    made = api.post("enrolment-keys", {"name": "k"})
    key = made["key"]
    first = enrol_by_key(api, key, addresses=["192.0.2.60"]).json()
    second = enrol_by_key(api, key, addresses=["192.0.2.61"]).json()
    denied = api.post(f"pending-enrolments/{first['pending_id']}/deny", {"reason": "not ours"}, 200)
    assert denied["state"] == "denied"
    refused = poll_enrolment(api, first["poll_handle"])
    assert refused.status_code == 403 and "not ours" in refused.json()["detail"]
    # Past its time, a held enrolment is expired (shown so, and refused with 410).
    with api.ctx.db.write() as session:
        session.execute(
            update(PendingEnrolment)
            .where(PendingEnrolment.id == second["pending_id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert api.get("pending-enrolments?state=pending")["items"][0]["state"] == "expired"
    assert poll_enrolment(api, second["poll_handle"]).status_code == 410
    assert poll_enrolment(api, "dbp1.made-up").status_code == 401
    assert poll_enrolment(api, "anything").status_code == 401
    # A made-up key, and a revoked one, with one answer.
    made_up = enrol_by_key(api, "dbk1." + "x" * 43, addresses=["127.0.1.1"])
    assert made_up.status_code == 401
    held = enrol_by_key(api, key, addresses=["192.0.2.62"]).json()
    api.delete(f"enrolment-keys/{made['id']}")
    revoked = enrol_by_key(api, key, addresses=["127.0.1.1"])
    assert revoked.status_code == 401 and revoked.json()["detail"] == made_up.json()["detail"]
    # What waited under the revoked key is denied with it.
    assert poll_enrolment(api, held["poll_handle"]).status_code == 403
    assert api.get("enrolment-keys")["items"][0]["revoked_at"] is not None
    # An expired key is refused the same way.
    old = api.post("enrolment-keys", {"name": "old", "expires_in_days": 1})
    with api.ctx.db.write() as session:
        session.execute(
            update(EnrolmentKey)
            .where(EnrolmentKey.id == old["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert enrol_by_key(api, old["key"], addresses=["127.0.1.1"]).status_code == 401


def test_a_tenants_key_and_pending_enrolments_stay_in_the_tenant(api: Api) -> None:
    api.seed_pool(1)  # lab-000 at 127.0.1.1, in the default tenant
    mine = api.post("enrolment-keys", {"name": "k"})
    other = _other_tenant_admin(api)
    theirs = other.post("enrolment-keys", {"name": "k"})  # the same name in another tenant
    assert theirs["tenant_id"] != mine["tenant_id"]
    # Their key, presented by a machine with our desktop's address, matches nothing of ours.
    held = enrol_by_key(api, theirs["key"], addresses=["127.0.1.1"])
    assert held.status_code == 202
    assert [k["id"] for k in other.get("enrolment-keys")["items"]] == [theirs["id"]]
    [pending] = other.get("pending-enrolments")["items"]
    # Nor can their admin approve it for our desktop, or touch our key.
    lab = api.get("desktops")["items"][0]["id"]
    answer = other.post(f"pending-enrolments/{pending['id']}/approve", {"desktop_id": lab}, 422)
    assert answer["detail"] == "desktop " + lab + " does not exist"
    other.delete(f"enrolment-keys/{mine['id']}", 404)
    # Our tenant's admin sees their held enrolment as not existing.
    add_local_user(api.ctx, "home-admin", USER_PASSWORD, role="tenant_admin")
    home = Api(
        api.client,
        api.ctx,
        api.client.post(
            "/api/v1/auth/login", json={"username": "home-admin", "password": USER_PASSWORD}
        ).json()["token"],
    )
    assert home.get("pending-enrolments")["items"] == []
    home.post(f"pending-enrolments/{pending['id']}/deny", {}, 404)
    assert [k["id"] for k in home.get("enrolment-keys")["items"]] == [mine["id"]]
    assert poll_enrolment(api, held.json()["poll_handle"]).status_code == 202


def test_the_real_agent_waits_for_approval_then_runs(api: Api, tmp_path: Path) -> None:
    api.seed_pool(1)
    lab = api.get("desktops")["items"][0]["id"]
    key = api.post("enrolment-keys", {"name": "static-machines"})["key"]
    broker = LiveBroker(api.ctx).start()
    try:
        agent = AgentProcess(
            tmp_path / "static",
            {
                "broker_url": broker.url,
                "enrolment_token": key,
                "metadata_url": f"http://127.0.0.1:{free_port()}",
                "sources": "none",
                "heartbeat_s": 0.5,
                "poll_s": 0.2,
                "retry_s": 0.2,
                "retry_max_s": 0.5,
            },
        ).start()
        try:
            # The host's own addresses match no desktop of the tenant: it waits.
            wait_until(
                lambda: bool(api.get("pending-enrolments?state=pending")["items"]),
                "the agent's enrolment to be held",
                timeout_s=30,
            )
            [pending] = api.get("pending-enrolments?state=pending")["items"]
            api.post(f"pending-enrolments/{pending['id']}/approve", {"desktop_id": lab}, 200)
            wait_until(
                lambda: api.get(f"desktops/{lab}")["agent_state"] == "running",
                "the approved agent to collect its credential and beat",
                timeout_s=30,
            )
        finally:
            agent.stop()
    finally:
        broker.stop()
    assert api.get("pending-enrolments")["items"][0]["state"] == "collected"
    # One enrolment only, however often it polled.
    assert len(events_of(api, lab, "agent.enrolled")) == 1


def test_the_agent_keeps_each_rotated_refresh_secret(api: Api) -> None:
    """The broker replaces the refresh secret on every use; an agent that kept the first
    one would be locked out at its second refresh (a desktop that changes hands twice)."""
    api.seed_pool(1)
    key = api.post("enrolment-keys", {"name": "k"})["key"]
    broker = LiveBroker(api.ctx).start()
    try:
        client = BrokerClient(AgentConfig(broker_url=broker.url))
        got = client.enrol(key, Identity(addresses=["127.0.1.1"]))
        assert isinstance(got, Credential)
        first = got.refresh_secret
        for _ in range(3):
            got = client.refresh(got)
        assert got.refresh_secret != first
        beat = api.client.post(
            "/api/v1/agent/heartbeat", json={}, headers={"Authorization": f"Bearer {got.token}"}
        )
        assert beat.status_code == 200, beat.text
    finally:
        broker.stop()


def test_a_denied_agent_does_not_ask_again_with_the_same_token(api: Api, tmp_path: Path) -> None:
    api.seed_pool(1)
    key = api.post("enrolment-keys", {"name": "k"})["key"]
    broker = LiveBroker(api.ctx).start()
    try:
        agent = AgentProcess(
            tmp_path / "denied",
            {
                "broker_url": broker.url,
                "enrolment_token": key,
                "metadata_url": f"http://127.0.0.1:{free_port()}",
                "sources": "none",
                "retry_s": 0.1,
                "retry_max_s": 0.2,
            },
        ).start()
        try:
            wait_until(
                lambda: bool(api.get("pending-enrolments?state=pending")["items"]),
                "the agent's enrolment to be held",
                timeout_s=30,
            )
            [pending] = api.get("pending-enrolments")["items"]
            api.post(f"pending-enrolments/{pending['id']}/deny", {"reason": "not ours"}, 200)
            wait_until(
                lambda: "denied" in agent.log(), "the agent to hear of the denial", timeout_s=30
            )
            # Many back-offs later, still the one request in the administrator's list.
            time.sleep(3)
            assert api.get("pending-enrolments")["total"] == 1
        finally:
            agent.stop()
    finally:
        broker.stop()
