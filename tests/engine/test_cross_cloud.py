"""A pool spanning cloudsim's OpenStack and moto's AWS: it overflows to AWS when the
OpenStack quota is reached, and comes back when capacity returns."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from cloudsim.server import CloudSim
from deskbroker.domain.placement import CenterLoad, Placement, overflow, place
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import CenterRoom, utcnow
from tests.ec2sim import Ec2Sim
from tests.engine.conftest import openstack_center, run_until
from tests.engine.test_aws_pool import aws_center
from tests.helpers import Api, wait_until
from tests.test_config_code import export, send


@pytest.fixture(scope="module")
def ec2() -> Iterator[Ec2Sim]:
    sim = Ec2Sim().start()
    yield sim
    sim.stop()


@pytest.fixture(autouse=True)
def _fresh_ec2(ec2: Ec2Sim) -> None:
    ec2.reset()


def _live_openstack(sim: CloudSim) -> list[dict[str, object]]:
    return [
        s for s in sim.servers("demo") if s["status"] != "DELETED" and s["task_state"] != "deleting"
    ]


def _where(api: Api, pool_id: str) -> dict[str, int]:
    """The pool's desktops by center name."""
    names = {c["id"]: c["name"] for c in api.get("centers")["items"]}
    counts: dict[str, int] = {}
    for member in api.get(f"pools/{pool_id}/members")["items"]:
        desktop = api.get(f"desktops/{member['id']}")
        counts[names[desktop["center_id"]]] = counts.get(names[desktop["center_id"]], 0) + 1
    return counts


def _available(api: Api, pool_id: str) -> int:
    return int(api.get(f"pools/{pool_id}/status")["counts"]["available"])


def _spanning_pool(api: Api, os_id: str, aws_id: str, ami: str, **extra: Any) -> dict[str, Any]:
    return api.post(
        "pools",
        {
            "name": "everywhere",
            "center_ids": [os_id, aws_id],
            "provisioning": {
                "enabled": True,
                "min_unassigned": 4,
                "max_total": 10,
                "centers": [os_id, aws_id],
                "parameters": {"name_template": "vdi-{SEQUENCE:3}"},
                "center_parameters": {
                    os_id: {"image": "cirros-0.6.2-x86_64-disk", "flavor": "m1.tiny"},
                    aws_id: {"image": ami, "instance_type": "t3.micro"},
                },
                **extra,
            },
        },
    )


def test_overflows_to_aws_at_the_openstack_quota_and_comes_back(
    api: Api, sim: CloudSim, ec2: Ec2Sim, engine: Engine, ctx: BrokerContext
) -> None:
    sim.set_quota("demo", instances=2)
    openstack = openstack_center(api, sim)
    aws = aws_center(api, ec2)
    pool = _spanning_pool(api, openstack["id"], aws["id"], ec2.image())
    run_until(engine, lambda: _available(api, pool["id"]) == 4, timeout_s=90)
    # Filled in order: OpenStack up to its quota, the rest overflowed to AWS.
    assert _where(api, pool["id"]) == {"cloud": 2, "aws": 2}
    assert len(_live_openstack(sim)) == 2 and len(ec2.live()) == 2
    events = api.get("events?kind=provision.overflow")["items"]
    assert events and all(e["detail"]["to"] == aws["id"] for e in events)
    assert "instances" in events[0]["detail"]["reason"]
    for instance in ec2.live():  # the AWS builds carry AWS's parameters, not OpenStack's
        assert instance["InstanceType"] == "t3.micro"

    # Capacity returns: once the back-off has passed, new desktops go to OpenStack again.
    sim.set_quota("demo", instances=10)
    with ctx.db.read() as session:
        marks = list(session.scalars(select(CenterRoom)))
    assert [m.center_id for m in marks] == [openstack["id"]]
    wait_until(lambda: utcnow() > marks[0].full_until + timedelta(milliseconds=50))
    api.patch(
        f"pools/{pool['id']}",
        {"provisioning": {**api.get(f"pools/{pool['id']}")["provisioning"], "min_unassigned": 6}},
    )
    run_until(engine, lambda: _available(api, pool["id"]) == 6, timeout_s=90)
    assert _where(api, pool["id"]) == {"cloud": 4, "aws": 2}
    assert len(_live_openstack(sim)) == 4 and len(ec2.live()) == 2


def test_spread_shares_builds_out(api: Api, sim: CloudSim, ec2: Ec2Sim, engine: Engine) -> None:
    openstack = openstack_center(api, sim)
    aws = aws_center(api, ec2)
    pool = _spanning_pool(api, openstack["id"], aws["id"], ec2.image(), placement="spread")
    run_until(engine, lambda: _available(api, pool["id"]) == 4, timeout_s=90)
    assert _where(api, pool["id"]) == {"cloud": 2, "aws": 2}


def test_a_spanning_pool_is_checked_per_center(api: Api, sim: CloudSim, ec2: Ec2Sim) -> None:
    openstack = openstack_center(api, sim)
    aws = aws_center(api, ec2)
    body = {
        "name": "bad",
        "center_ids": [openstack["id"], aws["id"]],
        "provisioning": {
            "enabled": True,
            "min_unassigned": 1,
            "max_total": 2,
            "centers": [openstack["id"], aws["id"]],
            "center_parameters": {
                openstack["id"]: {"image": "cirros", "flavor": "m1.tiny"},
                aws["id"]: {"image": "ami-1", "flavor": "m1.tiny"},
            },
        },
    }
    refused = api.post("pools", body, status=422)
    assert "center aws" in refused["detail"] and "flavor" in refused["detail"]
    # A center that is not one of the pool's (another tenant's, say) is refused too.
    other = {**body, "center_ids": [openstack["id"]]}
    other["provisioning"] = {**body["provisioning"], "center_parameters": {}}
    refused = api.post("pools", other, status=422)
    assert "not one of the pool's center_ids" in refused["detail"]
    assert api.get("pools")["total"] == 0


def test_placement_rules() -> None:
    loads = [CenterLoad("a", 3, 10), CenterLoad("b", 0, 1), CenterLoad("c", 1, 0)]
    assert place(3, Placement.FILL_IN_ORDER, loads) == ["a", "a", "a"]
    assert place(4, Placement.SPREAD, loads) == ["b", "b", "c", "b"]
    assert place(2, Placement.MOST_FREE, loads) == ["c", "b"]
    full_a = [CenterLoad("a", 3, 10, full=True), *loads[1:]]
    assert place(2, Placement.FILL_IN_ORDER, full_a) == ["b", "b"]
    assert overflow("a", Placement.FILL_IN_ORDER, full_a) == "b"
    assert place(1, Placement.SPREAD, [CenterLoad("a", 0, 0, full=True)]) == []
    assert overflow("a", Placement.SPREAD, [CenterLoad("a", 0, 0)]) is None


def test_a_spanning_pool_round_trips_through_config_as_code(
    api: Api, sim: CloudSim, ec2: Ec2Sim
) -> None:
    openstack = openstack_center(api, sim)
    aws = aws_center(api, ec2)
    _spanning_pool(api, openstack["id"], aws["id"], "ami-12345678", placement="most_free")
    document = export(api)
    (pool,) = [p for p in document["pools"] if p["name"] == "everywhere"]
    # Centers by name, as everything in the document.
    assert pool["provisioning"]["centers"] == ["cloud", "aws"]
    assert pool["provisioning"]["center_parameters"]["aws"]["instance_type"] == "t3.micro"
    assert pool["provisioning"]["placement"] == "most_free"
    planned = send(api, "plan", document)
    assert planned["changes"] == [], planned
    pool["provisioning"]["placement"] = "spread"
    send(api, "apply", document)
    stored = api.get("pools")["items"][0]["provisioning"]
    assert stored["placement"] == "spread" and stored["centers"] == [openstack["id"], aws["id"]]


def test_a_failing_center_is_passed_over(
    api: Api, sim: CloudSim, ec2: Ec2Sim, engine: Engine, ctx: BrokerContext
) -> None:
    """An OpenStack center whose scans fail (its password refused) gets no new builds
    while AWS has room."""
    openstack = openstack_center(api, sim)
    aws = aws_center(api, ec2)
    api.patch(f"centers/{openstack['id']}", {"secrets": {"password": "wrong"}})
    center_url = f"centers/{openstack['id']}"
    run_until(
        engine,
        lambda: api.get(center_url)["status"] == "error",
        what=lambda: f"the center to fail its scan: {api.get(center_url)['status']}",
    )
    pool = _spanning_pool(api, openstack["id"], aws["id"], ec2.image())
    run_until(engine, lambda: _available(api, pool["id"]) == 4, timeout_s=90)
    assert _where(api, pool["id"]) == {"aws": 4}
    assert _live_openstack(sim) == []
