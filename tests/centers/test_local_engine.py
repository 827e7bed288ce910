"""The engine on a local center: a provisioning pool fills to two Xvnc sessions, a user
is handed one and a real VNC client logs into it with the center's password at the
address and port the broker gives; power plans and deletion end the processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from deskbroker.bootstrap import add_local_user
from deskbroker.centers.local import LocalCenter
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from tests.centers import local_host
from tests.centers.local_host import VNC_PASSWORD, center_params, vnc_login
from tests.helpers import USER_PASSWORD, Api, run_queued_scan, wait_until
from tests.tools import VNCPASSWD, XVNC, require

TARGET = 2


@pytest.fixture
def params() -> Iterator[dict[str, Any]]:
    require(XVNC, VNCPASSWD)
    for state in local_host.state_dir():
        made = center_params(state, slots=TARGET + 1)
        yield made
        # Whatever the test left (a failure half-way): no Xvnc outlives it.
        local_host.stop_all(LocalCenter(made, {"vnc_password": VNC_PASSWORD}))


@pytest.fixture
def engine(ctx: BrokerContext) -> Iterator[Engine]:
    eng = Engine(ctx, workers=2)
    eng.recover()
    yield eng
    eng.stop()


def _status(api: Api, pool_id: str) -> dict[str, Any]:
    status: dict[str, Any] = api.get(f"pools/{pool_id}/status")
    return status


def test_a_pool_fills_with_sessions_a_vnc_client_logs_into(
    api: Api, engine: Engine, client: TestClient, params: dict[str, Any]
) -> None:
    center = api.post(
        "centers",
        {
            "name": "session-host",
            "kind": "local",
            "params": params,
            "secrets": {"vnc_password": VNC_PASSWORD},
        },
    )
    assert center["has_secrets"] and VNC_PASSWORD not in str(center)
    assert run_queued_scan(api, center["id"])["status"] == "ok"
    pool = api.post(
        "pools",
        {
            "name": "sessions",
            "center_ids": [center["id"]],
            "provisioning": {
                "enabled": True,
                "min_unassigned": TARGET,
                "max_total": TARGET,
                "parameters": {"name_template": "sess-{SEQUENCE:2}", "geometry": "1024x768"},
            },
        },
    )

    def filled() -> bool:
        engine.run_once()
        return bool(_status(api, pool["id"])["counts"]["available"] >= TARGET)

    wait_until(filled, lambda: f"the pool to fill: {_status(api, pool['id'])}", timeout_s=60)
    host = LocalCenter(params, {"vnc_password": VNC_PASSWORD})
    machines = {m.external_id: m for m in host.inventory()}
    members = api.get(f"pools/{pool['id']}/members")["items"]
    assert len(members) == TARGET == len(machines)
    for member in members:
        desktop = api.get(f"desktops/{member['id']}")
        machine = machines[desktop["external_id"]]
        assert machine.desktop_id == member["id"]
        assert desktop["attributes"]["ports"]["vnc"] == machine.attributes["ports"]["vnc"]
        assert machine.attributes["geometry"] == "1024x768"

    # A user is handed one; the broker's answer is where a VNC client goes.
    policy = api.post("policies", {"name": "s", "entries": [{"pool_id": pool["id"]}]})
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    add_local_user(api.ctx, "user0", USER_PASSWORD)
    token = api.login("user0")["token"]
    desktop_id = str(api.login("user0")["offers"][0]["desktop"]["id"])
    answer = client.post(
        f"/api/v1/client/desktops/{desktop_id}/connect",
        json={"protocol": "vnc"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.text
    where = answer.json()
    external = api.get(f"desktops/{desktop_id}")["external_id"]
    assert (where["host"], where["port"]) == (
        "127.0.0.1",
        machines[external].attributes["ports"]["vnc"],
    )
    banner, types, result = vnc_login(where["host"], where["port"], VNC_PASSWORD)
    assert banner == b"RFB 003.008\n" and types == [2] and result == 0
    assert vnc_login(where["host"], where["port"], "not-it")[2] != 0

    # The admin stops it through the broker: the process ends, the definition stays.
    stopped = api.post(f"desktops/{desktop_id}/power", {"action": "stop"}, status=200)
    assert stopped["was"] == "running"
    wait_until(
        lambda: (m := host.machine(external)) is not None and m.power_state.value == "stopped",
        "the desktop's Xvnc to end",
    )
    with pytest.raises(OSError):
        vnc_login(where["host"], where["port"], VNC_PASSWORD)
