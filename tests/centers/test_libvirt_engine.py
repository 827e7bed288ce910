"""The engine and the plans on a libvirt center (libvirt's test driver): a provisioning
pool fills to its target with qcow2-overlay domains, a power plan suspends a desktop,
start on connect resumes it, and a logout plan shuts it down, each seen in libvirt."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
import pytest
from fastapi.testclient import TestClient

from deskbroker.bootstrap import add_local_user
from deskbroker.centers.base import CENTER_KEY, ProvisionRequest
from deskbroker.centers.libvirt import LibvirtCenter
from deskbroker.centers.libvirt.domxml import domain_facts
from deskbroker.centers.registry import open_driver
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.maintenance import leak_sweep
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import utcnow
from tests.centers.libvirt_node import center_params
from tests.desktop_agent import Agent, assigned_desktop, events_of, fire_due, with_plans
from tests.helpers import USER_PASSWORD, Api, run_queued_scan, wait_until

TARGET = 3


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LibvirtCenter]:
    """A look at the libvirt host the center uses: the same URI shares the same
    connection, so it sees what the broker's drivers do."""
    driver = open_driver("libvirt", center_params(tmp_path), {})
    assert isinstance(driver, LibvirtCenter)
    yield driver
    driver.hypervisor.close()


@pytest.fixture
def engine(ctx: BrokerContext) -> Iterator[Engine]:
    eng = Engine(ctx, workers=4)
    eng.recover()
    yield eng
    eng.stop()


def _domains(host: LibvirtCenter) -> dict[str, libvirt.virDomain]:
    conn = host.hypervisor.connection()
    return {d.UUIDString(): d for d in conn.listAllDomains(0)}


def _state(host: LibvirtCenter, external_id: str) -> int:
    return int(_domains(host)[external_id].state()[0])


def _status(api: Api, pool_id: str) -> dict[str, Any]:
    status: dict[str, Any] = api.get(f"pools/{pool_id}/status")
    return status


def _fill(api: Api, engine: Engine, host: LibvirtCenter, tmp_path: Path) -> dict[str, Any]:
    center = api.post(
        "centers",
        {"name": "kvm", "kind": "libvirt", "params": center_params(tmp_path), "secrets": {}},
    )
    scanned = run_queued_scan(api, center["id"])
    assert scanned["status"] == "ok", scanned["status_message"]
    pool = api.post(
        "pools",
        {
            "name": "kvm",
            "center_ids": [center["id"]],
            "provisioning": {
                "enabled": True,
                "min_unassigned": TARGET,
                "max_total": TARGET,
                "parameters": {
                    "name_template": "vdi-{SEQUENCE:3}",
                    "image": "win11-base.qcow2",
                    "memory_mib": 1024,
                    "vcpus": 1,
                },
            },
        },
    )

    def filled() -> bool:
        engine.run_once()
        return bool(_status(api, pool["id"])["counts"]["available"] >= TARGET)

    wait_until(filled, lambda: f"the pool to fill: {_status(api, pool['id'])}", timeout_s=60)
    policy = api.post("policies", {"name": "kvm", "entries": [{"pool_id": pool["id"]}]})
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    api.ids.update(center=center["id"], pool=pool["id"], policy=policy["id"])
    return pool


def _connect(client: TestClient, token: str, desktop: str) -> Any:
    return client.post(
        f"/api/v1/client/desktops/{desktop}/connect",
        json={"protocol": "vnc"},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_a_pool_fills_and_power_plans_act_on_libvirt_domains(
    api: Api, engine: Engine, host: LibvirtCenter, client: TestClient, tmp_path: Path
) -> None:
    pool = _fill(api, engine, host, tmp_path)
    members = api.get(f"pools/{pool['id']}/members")["items"]
    assert len(members) == TARGET
    domains = _domains(host)
    built = 0
    for member in members:
        desktop = api.get(f"desktops/{member['id']}")
        domain = domains[desktop["external_id"]]
        marks = domain_facts(domain.XMLDesc(0)).marks
        if domain.name() == "hand-made":
            assert marks is None  # taken in by the pool, not built
            continue
        built += 1
        # Each build carries its desktop in the domain's metadata and runs on an overlay.
        assert marks is not None and marks.metadata["deskbroker_desktop"] == member["id"]
        assert marks.volumes == (("desktops", f"{domain.name()}.qcow2"),)
        assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert built >= TARGET - 1
    # Nothing beyond the target: no domain the pool does not hold.
    assert set(domains) == {api.get(f"desktops/{m['id']}")["external_id"] for m in members}

    # A power plan: suspend at disconnect; a logout shuts the desktop down.
    with_plans(
        api,
        power=[
            {"event": "disconnect", "after_minutes": 0, "action": "suspend"},
            {"event": "logout", "after_minutes": 0, "action": "shutdown"},
        ],
    )
    add_local_user(api.ctx, "user0", USER_PASSWORD)
    token = api.login("user0")["token"]
    desktop = assigned_desktop(api, "user0")
    external = api.get(f"desktops/{desktop}")["external_id"]
    agent = Agent.mint(api, desktop)
    agent.send("login")
    agent.send("disconnect")
    drivers = DriverCache(api.ctx)
    assert fire_due(api.ctx, drivers, datetime.now(UTC)) == 1
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.suspend"]
    assert _state(host, external) == libvirt.VIR_DOMAIN_PAUSED
    assert api.get(f"desktops/{desktop}")["power_state"] == "suspended"

    # The user comes back: start on connect resumes the domain, then hands it over.
    assert _connect(client, token, desktop).status_code == 202
    assert _state(host, external) == libvirt.VIR_DOMAIN_RUNNING
    ready = wait_until(
        lambda: (r := _connect(client, token, desktop)).status_code == 200 and r,
        "the resumed desktop to be handed over",
    )
    assert ready.json()["host"] == host.machine(external).address  # type: ignore[union-attr]

    agent.send("reconnect")
    agent.send("logout")
    assert fire_due(api.ctx, drivers, datetime.now(UTC)) == 1
    assert [e["kind"] for e in events_of(api, desktop)][-1] == "plan.shutdown"
    assert _state(host, external) == libvirt.VIR_DOMAIN_SHUTOFF


def test_the_leak_sweep_finds_and_reaps_only_this_centers_domains(
    api: Api, host: LibvirtCenter, tmp_path: Path
) -> None:
    center = api.post(
        "centers",
        {"name": "kvm", "kind": "libvirt", "params": center_params(tmp_path, reap_leaks=True)},
    )
    assert run_queued_scan(api, center["id"])["status"] == "ok"

    # A build whose desktop the broker lost (a crash between the call and the record),
    # and one of another center sharing the host.
    def build(name: str, center_id: str) -> str:
        return host.create(
            ProvisionRequest(
                name=name,
                metadata={CENTER_KEY: center_id},
                parameters={"image": "win11-base.qcow2", "memory_mib": 256, "vcpus": 1},
            )
        )

    lost = build("lost-1", center["id"])
    other = build("other-1", "another-center")
    said = leak_sweep(api.ctx, DriverCache(api.ctx), center["id"], utcnow())
    assert said == "1 leaked instance(s) removed"
    remaining = _domains(host)
    assert lost not in remaining and other in remaining
    assert "11111111-2222-3333-4444-555555555555" in remaining  # hand-made: never touched
    [event] = api.get("events?kind=leak")["items"]
    assert event["detail"]["instances"] == [lost] and event["detail"]["removed"] is True
