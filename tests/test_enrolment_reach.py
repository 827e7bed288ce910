"""The stronger-account rule on enrolment keys: a tenant administrator's key, and their
approval of a held enrolment, never hand out the agent of a desktop a global
administrator holds or is offered (whoever holds that agent's token speaks for the
desktop's sessions and cuts its agent off), as minting its agent token would not."""

from __future__ import annotations

from deskbroker.bootstrap import add_local_user
from tests.desktop_agent import enrol_by_key, events_of, poll_enrolment
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api


def _tenant_admin(api: Api) -> Api:
    """A tenant admin of the tenant that holds the global admin (the default tenant)."""
    add_local_user(api.ctx, "tad", USER_PASSWORD, role="tenant_admin")
    return Api(api.client, api.ctx, api.login("tad")["token"])


def _global_admins_desktops(api: Api) -> tuple[str, str]:
    """The "lab" pool a catch-all rule offers everyone, the global admin too, who holds
    one of its two desktops: (held, free)."""
    api.seed_pool(2)
    held = api.login("admin", ADMIN_PASSWORD)["offers"][0]["desktop"]["id"]
    [free] = [d["id"] for d in api.get("desktops")["items"] if d["id"] != held]
    return held, free


def _beat(api: Api, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return api.client.post("/api/v1/agent/heartbeat", json={}, headers=headers).status_code


def test_a_tenant_admin_cannot_approve_an_enrolment_for_a_stronger_accounts_desktop(
    api: Api,
) -> None:
    held, free = _global_admins_desktops(api)
    tad = _tenant_admin(api)
    key = tad.post("enrolment-keys", {"name": "tad-image"})["key"]
    waiting = enrol_by_key(api, key, instance="i-matches-nothing", addresses=["192.0.2.50"])
    assert waiting.status_code == 202, waiting.text
    pending, handle = waiting.json()["pending_id"], waiting.json()["poll_handle"]

    refused = tad.post(f"pending-enrolments/{pending}/approve", {"desktop_id": held}, 403)
    assert refused["detail"].startswith(
        "only a global administrator can approve an agent enrolment for desktop lab-"
    )
    assert "admin, whose role is global_admin, holds it" in refused["detail"]
    # The pool's free desktop is offered to the global admin: out of reach too.
    refused = tad.post(f"pending-enrolments/{pending}/approve", {"desktop_id": free}, 403)
    assert "admin, whose role is global_admin, gets desktops through it" in refused["detail"]
    # Nothing was decided: the agent still waits, with no credential.
    assert tad.get("pending-enrolments")["items"][0]["state"] == "pending"
    assert poll_enrolment(api, handle).status_code == 202

    # A global administrator may approve it, and the agent collects that desktop's agent.
    approved = api.post(f"pending-enrolments/{pending}/approve", {"desktop_id": held}, 200)
    assert approved["state"] == "approved"
    got = poll_enrolment(api, handle)
    assert got.status_code == 200, got.text
    assert got.json()["desktop_id"] == held


def test_a_key_holds_a_stronger_accounts_desktop_and_enrols_an_ordinary_one_at_once(
    api: Api,
) -> None:
    held, free = _global_admins_desktops(api)
    desktops = {d["id"]: d for d in api.get("desktops")["items"]}
    # The held desktop's agent runs on a token the global admin minted (it never enrolled).
    minted = api.post(f"desktops/{held}/agent-token", {})["token"]
    tad = _tenant_admin(api)
    key = tad.post("enrolment-keys", {"name": "tad-image"})["key"]

    # The instance id names the global admin's desktop: held for approval, not enrolled.
    named = enrol_by_key(api, key, instance=desktops[held]["external_id"], addresses=["192.0.2.51"])
    assert named.status_code == 202, named.text
    assert (
        f"desktop {desktops[held]['name']} is held or offered by an account"
        in (named.json()["detail"])
    )
    assert "global_admin" not in named.json()["detail"]  # it names no account to the agent
    assert events_of(api, held, "agent.enrolled") == []
    assert _beat(api, minted) == 200  # its agent is not cut off
    # An address of the pool's free desktop (offered to the global admin): held too.
    by_address = enrol_by_key(api, key, addresses=[desktops[free]["address"]])
    assert by_address.status_code == 202, by_address.text
    # The tenant admin cannot approve it; the global admin can.
    pending = named.json()["pending_id"]
    tad.post(f"pending-enrolments/{pending}/approve", {"desktop_id": held}, 403)
    api.post(f"pending-enrolments/{pending}/approve", {"desktop_id": held}, 200)
    got = poll_enrolment(api, named.json()["poll_handle"])
    assert got.status_code == 200 and got.json()["desktop_id"] == held

    # An ordinary desktop (the tenant admin's own machine, which they hold: no account
    # stronger than them holds or is offered it) is enrolled at once, as before.
    center = tad.post(
        "centers",
        {
            "name": "plain",
            "kind": "static",
            "params": {"machines": [{"name": "plain-1", "address": "198.51.100.66"}]},
        },
    )
    [ordinary] = tad.get(f"desktops?center_id={center['id']}")["items"]
    me = {u["username"]: u["id"] for u in tad.get("users")["items"]}["tad"]
    tad.post("assignments", {"desktop_id": ordinary["id"], "user_id": me})
    enrolled = enrol_by_key(api, key, instance="plain-1")
    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.json()["desktop_id"] == ordinary["id"]
    [event] = events_of(api, ordinary["id"], "agent.enrolled")
    assert event["detail"]["how"] == "key tad-image"


def test_an_approval_is_checked_again_when_the_agent_collects_it(api: Api) -> None:
    """Between a tenant administrator's approval and the agent's next poll, the desktop
    came within a global administrator's reach (a rule now offers its pool): the
    credential is not handed out, and the enrolment is denied for good."""
    center = api.post(
        "centers",
        {
            "name": "later",
            "kind": "static",
            "params": {"machines": [{"name": "later-1", "address": "198.51.100.70"}]},
        },
    )
    [desktop] = api.get(f"desktops?center_id={center['id']}")["items"]
    pool = api.post("pools", {"name": "later", "center_ids": [center["id"]]})
    tad = _tenant_admin(api)
    key = tad.post("enrolment-keys", {"name": "tad-image"})["key"]
    waiting = enrol_by_key(api, key, instance="i-matches-nothing", addresses=["192.0.2.60"])
    assert waiting.status_code == 202, waiting.text
    pending, handle = waiting.json()["pending_id"], waiting.json()["poll_handle"]
    tad.post(f"pending-enrolments/{pending}/approve", {"desktop_id": desktop["id"]}, 200)

    policy = api.post("policies", {"name": "later", "entries": [{"pool_id": pool["id"]}]})
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    refused = poll_enrolment(api, handle)
    assert refused.status_code == 403, refused.text
    assert "came within the reach of an account stronger" in refused.json()["detail"]
    assert "global_admin" not in refused.json()["detail"]
    [row] = api.get("pending-enrolments")["items"]
    assert row["state"] == "denied"
    assert events_of(api, desktop["id"], "agent.enrolled") == []
    assert poll_enrolment(api, handle).status_code == 403  # denied for good
