"""A forced delete of a center whose cloud is gone for good: ``DELETE
/api/v1/admin/centers/{id}?force=true`` drops the desktops waiting for the center's
removal job with the center, names each machine it stops tracking in the tenant's event
log, calls no cloud, and leaves a removal pass running meanwhile nothing to trip on.
Everything else a plain delete refuses it refuses too."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cloudsim.server import CloudSim
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.removals import remove_desktops
from deskbroker.services.center_removal import ABANDONED_KIND, MAX_LISTED
from deskbroker.store.tables import Desktop, utcnow
from tests.helpers import Api, built_desktops, tenant_admin_of, wait_until
from tests.tarpit import silent_center, tarpit

# Each lookup of a machine by the removal pass in the race below waits this long: the
# forced delete has all of it to commit between the pass's read and its write.
LOOKUP_LATENCY_S = 1.5


def _rows_of(api: Api, center_id: str) -> int:
    with api.ctx.db.read() as session:
        return len([d for d in session.query(Desktop).filter(Desktop.center_id == center_id)])


def _abandoned(api: Api) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"events?kind={ABANDONED_KIND}")["items"]
    return items


def test_a_forced_delete_drops_the_removals_and_names_the_abandoned_machines(api: Api) -> None:
    with tarpit() as pit:
        silent = silent_center(api, pit, timeout_s=1.0)
        doomed = built_desktops(api, silent["id"], 4)
        for desktop_id in doomed[:3]:
            api.delete(f"desktops/{desktop_id}", status=202)

        refused = api.delete(f"centers/{silent['id']}", status=409)
        assert refused["detail"] == (
            "center silent is still removing 3 desktops; delete it once they are gone"
        )
        for bad in ("maybe", "", "2"):
            answer = api.client.delete(
                f"/api/v1/admin/centers/{silent['id']}",
                params={"force": bad},
                headers=api.headers,
            )
            assert answer.status_code == 422, answer.text
            assert answer.json()["detail"].startswith("force: Input should be a valid boolean")
        # Another tenant's administrator cannot tell it from a center that does not exist.
        other = tenant_admin_of(api, "b", "boss-b")
        theirs = other.delete(f"centers/{silent['id']}?force=true", status=404)
        made_up = other.delete(f"centers/{'0' * 32}?force=true", status=404)
        assert theirs["title"] == made_up["title"]
        assert _rows_of(api, silent["id"]) == 4 and _abandoned(api) == []

        api.delete(f"centers/{silent['id']}?force=true")
        api.get(f"centers/{silent['id']}", status=404)
        assert _rows_of(api, silent["id"]) == 0
        # The broker asked the cloud nothing, for the request nor for the desktops.
        assert pit.accepted == 0

        [event] = _abandoned(api)
        assert event["actor"] == "admin"
        assert event["tenant_id"] == silent["tenant_id"]
        detail = event["detail"]
        assert (detail["center_id"], detail["center"], detail["center_kind"]) == (
            silent["id"],
            "silent",
            "openstack",
        )
        assert detail["count"] == 3
        assert detail["machines"] == [
            {"desktop_id": doomed[i], "name": f"built-{i:03d}", "external_id": f"built-server-{i}"}
            for i in range(3)
        ]
        deleted = api.get("events?kind=admin.delete&limit=10")["items"]
        assert any(e["detail"].get("id") == silent["id"] for e in deleted)

        # The center's removal job finds nothing left to do, and asks nobody.
        assert remove_desktops(api.ctx, DriverCache(api.ctx), silent["id"], utcnow()) == (
            "nothing to remove"
        )
        assert pit.accepted == 0


def test_the_event_lists_a_bounded_number_of_machines(api: Api) -> None:
    with tarpit() as pit:
        silent = silent_center(api, pit, timeout_s=1.0)
        many = MAX_LISTED + 5
        built_desktops(api, silent["id"], many)
        with api.ctx.db.write() as session:
            for desktop in session.query(Desktop).filter(Desktop.center_id == silent["id"]):
                desktop.power_state, desktop.availability = "deleting", "unavailable"
                desktop.delete_requested_at = utcnow()
        api.delete(f"centers/{silent['id']}?force=true")
        [event] = _abandoned(api)
        assert event["detail"]["count"] == many
        listed = event["detail"]["machines"]
        assert len(listed) == MAX_LISTED
        assert [m["name"] for m in listed] == [f"built-{i:03d}" for i in range(MAX_LISTED)]


def test_force_refuses_all_else_a_plain_delete_refuses(api: Api) -> None:
    ids = api.seed_pool(2, users=1)
    api.login("user0")
    held = api.delete(f"centers/{ids['center']}?force=true", status=409)["detail"]
    assert held.startswith("center lab-center has assigned desktops (e.g. lab-00")

    with tarpit() as pit:
        silent = silent_center(api, pit, timeout_s=1.0)
        for desktop_id in built_desktops(api, silent["id"], 2):
            api.delete(f"desktops/{desktop_id}", status=202)
        pool = api.post("pools", {"name": "silent-pool", "center_ids": [silent["id"]]})
        used = api.delete(f"centers/{silent['id']}?force=true", status=409)["detail"]
        assert used == "center silent is used by pool silent-pool; remove it from them first"
        # Refused whole: the desktops are still being removed, and nothing is recorded.
        assert api.get(f"desktops?center_id={silent['id']}&power_state=deleting")["total"] == 2
        assert _abandoned(api) == []
        api.patch(f"pools/{pool['id']}", {"center_ids": []})
        api.delete(f"centers/{silent['id']}?force=true")
        assert _abandoned(api)[0]["detail"]["count"] == 2
        assert pit.accepted == 0

    # With nothing being removed, force changes nothing: the delete of any other center.
    spare = api.post("centers", {"name": "spare", "kind": "static", "params": {"machines": []}})
    api.delete(f"centers/{spare['id']}?force=false")
    assert len(_abandoned(api)) == 1


@pytest.fixture(scope="module")
def sim() -> Iterator[CloudSim]:
    simulator = CloudSim(projects=["demo"]).start()
    yield simulator
    simulator.stop()


def test_a_removal_pass_running_meanwhile_finds_the_rows_gone(api: Api, sim: CloudSim) -> None:
    """The pass read the center's desktops to remove, then asks the cloud about each with
    no transaction open; the forced delete commits meanwhile. The cloud says the machines
    are gone, and the pass's write finds no row to drop: it writes nothing and fails
    nothing."""
    center = api.post(
        "centers",
        {
            "name": "cloud",
            "kind": "openstack",
            "params": {
                "auth_url": sim.auth_url,
                "project_name": "demo",
                "username": "demo",
                "retry_base_s": 0.01,
            },
            "secrets": {"password": "password"},
        },
    )
    doomed = built_desktops(api, center["id"], 2, prefix="gone")
    for desktop_id in doomed:
        api.delete(f"desktops/{desktop_id}", status=202)
    sim.clear_requests()
    slow = sim.add_latency(LOOKUP_LATENCY_S, method="GET", path="/servers/gone-server-")
    outcome: list[object] = []

    def run_pass() -> None:
        try:
            outcome.append(remove_desktops(api.ctx, DriverCache(api.ctx), center["id"], utcnow()))
        except Exception as exc:  # reported by the assertion below
            outcome.append(exc)

    runner = threading.Thread(target=run_pass, name="removal-pass")
    try:
        runner.start()
        # Authenticated: the pass has read its rows and is on its way to the lookups.
        wait_until(
            lambda: sim.request_count(method="POST", path="/auth/tokens") > 0,
            "the removal pass to reach the cloud",
            timeout_s=10,
        )
        api.delete(f"centers/{center['id']}?force=true")
        runner.join(timeout=30)
    finally:
        sim.remove_rule(slow)
    assert not runner.is_alive()
    assert outcome == ["0 removed, 0 asked to delete"], outcome
    # The pass did look the machines up after the delete: a real race, not a late start.
    assert sim.request_count(method="GET", path="/servers/gone-server-") == 2
    [event] = _abandoned(api)
    assert sorted(m["desktop_id"] for m in event["detail"]["machines"]) == sorted(doomed)
    for desktop_id in doomed:
        assert api.get(f"events?kind=desktop.deleted&desktop_id={desktop_id}")["total"] == 0
    assert _rows_of(api, center["id"]) == 0
