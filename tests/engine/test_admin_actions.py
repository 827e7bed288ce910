"""Helpdesk actions on an OpenStack (cloudsim) desktop: power it, end a stale session."""

from __future__ import annotations

from typing import Any

from cloudsim.server import CloudSim
from deskbroker.bootstrap import add_local_user
from tests.engine.conftest import openstack_center
from tests.helpers import USER_PASSWORD, Api, scan_now, wait_until


def _desktop(api: Api, sim: CloudSim) -> dict[str, Any]:
    [server_id] = sim.seed_servers(1)
    center = openstack_center(api, sim)
    scan_now(api, center["id"])
    [desktop] = [d for d in api.get("desktops")["items"] if d["external_id"] == server_id]
    return desktop


def _status(sim: CloudSim, server_id: str) -> str:
    return str(next(s for s in sim.servers("demo") if s["id"] == server_id)["status"])


def _wait(sim: CloudSim, server_id: str, status: str) -> None:
    wait_until(
        lambda: _status(sim, server_id) == status,
        lambda: f"server {server_id} to be {status}, not {_status(sim, server_id)}",
    )


def test_helpdesk_powers_a_desktop_and_ends_a_stale_session(api: Api, sim: CloudSim) -> None:
    desktop = _desktop(api, sim)
    add_local_user(api.ctx, "hana", USER_PASSWORD, role="helpdesk")
    add_local_user(api.ctx, "audrey", USER_PASSWORD, role="auditor")
    helpdesk = Api(api.client, api.ctx, api.login("hana")["token"])
    auditor = Api(api.client, api.ctx, api.login("audrey")["token"])
    path = f"desktops/{desktop['id']}/power"

    detail = auditor.post(path, {"action": "stop"}, status=403)["detail"]
    assert detail == "Your role auditor does not allow desktops:power."
    assert "is running: it cannot start" in helpdesk.post(path, {"action": "start"}, 409)["detail"]

    # A session in use protects the desktop unless forced.
    token = api.post(f"desktops/{desktop['id']}/agent-token", {})["token"]
    response = api.client.post(
        "/api/v1/agent/events",
        json={"event": "login", "user": "alice", "session_key": "s1"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code in (200, 201), response.text
    refused = helpdesk.post(path, {"action": "reboot"}, status=409)["detail"]
    assert "has a session of alice in use" in refused
    rebooted = helpdesk.post(path, {"action": "reboot", "force": True}, status=200)
    assert rebooted["was"] == "running" and rebooted["power_state"] == "running"

    # The agent died with the desktop: the helpdesk ends the session the broker still holds.
    [row] = helpdesk.get(f"sessions?desktop_id={desktop['id']}")["items"]
    ended = helpdesk.post(f"sessions/{row['id']}/end", {"reason": "agent gone"}, status=200)
    assert ended == {"session_id": row["id"], "state": "logged_out", "was": "logged_in"}
    assert "already ended" in helpdesk.post(f"sessions/{row['id']}/end", {}, 409)["detail"]
    auditor.post(f"sessions/{row['id']}/end", {}, status=403)

    _wait(sim, desktop["external_id"], "ACTIVE")
    stopped = helpdesk.post(path, {"action": "stop"}, status=200)
    assert stopped["power_state"] == "stopped"
    _wait(sim, desktop["external_id"], "SHUTOFF")
    assert helpdesk.post(path, {"action": "start"}, status=200)["power_state"] == "running"
    _wait(sim, desktop["external_id"], "ACTIVE")

    kinds = [e["kind"] for e in api.get(f"events?desktop_id={desktop['id']}")["items"]]
    assert kinds.count("admin.power") == 3 and "admin.session_end" in kinds
    helpdesk.post("desktops/unknown/power", {"action": "start"}, status=404)
    helpdesk.post(path, {"action": "explode"}, status=422)


def _tokens(sim: CloudSim) -> int:
    return sim.request_count(method="POST", path=r"/v3/auth/tokens$")


def test_power_actions_reuse_the_centers_authenticated_driver(api: Api, sim: CloudSim) -> None:
    desktop = _desktop(api, sim)
    path = f"desktops/{desktop['id']}/power"
    # The scan opened (and authenticated) the center's driver: power uses that one.
    before = _tokens(sim)
    assert before >= 1
    assert api.post(path, {"action": "stop"}, status=200)["power_state"] == "stopped"
    _wait(sim, desktop["external_id"], "SHUTOFF")
    assert api.post(path, {"action": "start"}, status=200)["power_state"] == "running"
    _wait(sim, desktop["external_id"], "ACTIVE")
    assert _tokens(sim) == before

    # Changing how the center connects opens (and authenticates) a new driver, once.
    center_id = desktop["center_id"]
    api.patch(f"centers/{center_id}", {"params": {**_params(api, center_id), "timeout_s": 29}})
    assert api.post(path, {"action": "stop"}, status=200)["power_state"] == "stopped"
    _wait(sim, desktop["external_id"], "SHUTOFF")
    assert api.post(path, {"action": "start"}, status=200)["power_state"] == "running"
    assert _tokens(sim) == before + 1


def _params(api: Api, center_id: str) -> dict[str, Any]:
    return dict(api.get(f"centers/{center_id}")["params"])


def test_an_agent_is_lost_when_its_machine_is_seen_off_and_found_on_its_next_report(
    api: Api, sim: CloudSim
) -> None:
    desktop = _desktop(api, sim)
    path = f"desktops/{desktop['id']}"
    assert api.get(path)["agent_state"] == "unknown"
    token = api.post(f"{path}/agent-token", {})["token"]

    def report(event: str) -> None:
        response = api.client.post(
            "/api/v1/agent/events",
            json={"event": event, "user": "alice", "session_key": "s1"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code in (200, 201), response.text

    report("login")
    assert api.get(path)["agent_state"] == "running"
    # The machine is shut off behind the broker's back: the next scan sees it, and no
    # agent can be running on it any more.
    sim.set_server_state(desktop["external_id"], "SHUTOFF")
    scan_now(api, desktop["center_id"])
    seen = api.get(path)
    assert (seen["power_state"], seen["agent_state"]) == ("stopped", "lost")
    # Back on, the agent's next report finds it again.
    sim.set_server_state(desktop["external_id"], "ACTIVE")
    scan_now(api, desktop["center_id"])
    assert api.get(path)["agent_state"] == "lost"
    report("logout")
    assert api.get(path)["agent_state"] == "running"
