"""A pool on an AWS center (moto's EC2 server) fills to its target through the engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from deskbroker.engine.runner import Engine
from tests.ec2sim import KEYS, REGION, Ec2Sim
from tests.engine.conftest import run_until
from tests.helpers import Api


@pytest.fixture(scope="module")
def ec2() -> Iterator[Ec2Sim]:
    sim = Ec2Sim().start()
    yield sim
    sim.stop()


@pytest.fixture(autouse=True)
def _fresh_ec2(ec2: Ec2Sim) -> None:
    ec2.reset()


def aws_center(api: Api, ec2: Ec2Sim, name: str = "aws", **params: Any) -> dict[str, Any]:
    center: dict[str, Any] = api.post(
        "centers",
        {
            "name": name,
            "kind": "aws",
            "params": {"region": REGION, "endpoint_url": ec2.url, "retries": 1, **params},
            "secrets": dict(KEYS),
            "scan_interval_s": 5,
        },
    )
    return center


def _status(api: Api, pool_id: str) -> dict[str, int]:
    counts: dict[str, int] = api.get(f"pools/{pool_id}/status")["counts"]
    return counts


def test_a_pool_on_aws_fills_to_its_target(api: Api, ec2: Ec2Sim, engine: Engine) -> None:
    ami = ec2.image()
    center = aws_center(api, ec2)
    assert "secrets" not in center or not center["secrets"]
    assert KEYS["secret_access_key"] not in str(api.get(f"centers/{center['id']}"))
    pool = api.post(
        "pools",
        {
            "name": "aws-auto",
            "center_ids": [center["id"]],
            "provisioning": {
                "enabled": True,
                "min_unassigned": 3,
                "max_total": 5,
                "parameters": {
                    "name_template": "aws-{SEQUENCE:3}",
                    "image": ami,
                    "instance_type": "t3.micro",
                },
            },
        },
    )
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 3)
    live = ec2.live()
    assert len(live) == 3
    names = sorted(d["name"] for d in api.get(f"pools/{pool['id']}/members")["items"])
    assert names == ["aws-001", "aws-002", "aws-003"]
    by_name = {
        next(t["Value"] for t in i["Tags"] if t["Key"] == "Name"): i["InstanceId"] for i in live
    }
    assert sorted(by_name) == names
    for instance in live:
        keys = {t["Key"] for t in instance["Tags"]}
        # The marks the leak sweep and a resumed build look for.
        assert {"deskbroker", "deskbroker_center", "deskbroker_desktop"} <= keys
        assert "deskbroker_enrol" not in keys
    members = [
        api.get(f"desktops/{m['id']}") for m in api.get(f"pools/{pool['id']}/members")["items"]
    ]
    assert {m["external_id"] for m in members} == set(by_name.values())
    assert all(m["address"] for m in members)


def test_a_pool_parameter_aws_does_not_know_is_a_422(api: Api, ec2: Ec2Sim) -> None:
    center = aws_center(api, ec2)
    body = api.post(
        "pools",
        {
            "name": "bad",
            "center_ids": [center["id"]],
            "provisioning": {
                "enabled": True,
                "min_unassigned": 1,
                "max_total": 1,
                "parameters": {"image": "ami-1", "flavor": "m1.tiny"},
            },
        },
        status=422,
    )
    assert "flavor" in body["detail"]
    assert api.get("pools")["total"] == 0
