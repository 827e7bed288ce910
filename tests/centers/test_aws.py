"""The AWS center against moto's EC2 server, through the real boto3."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deskbroker.centers.aws.driver import AwsCenter
from deskbroker.centers.aws.session import AwsFailure
from deskbroker.centers.base import (
    CENTER_KEY,
    DESKTOP_KEY,
    CenterDriver,
    PowerAction,
    ProvisionRequest,
    QuotaExceeded,
    UnknownName,
)
from deskbroker.centers.registry import open_driver, validate_params
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError, InvalidInput
from tests.centers.conformance import CenterConformance
from tests.ec2sim import KEYS, REGION, Ec2Sim
from tests.helpers import wait_until


@pytest.fixture(scope="module")
def ec2() -> Iterator[Ec2Sim]:
    sim = Ec2Sim().start()
    yield sim
    sim.stop()


@pytest.fixture(autouse=True)
def _fresh(ec2: Ec2Sim) -> None:
    ec2.reset()


def _open(ec2: Ec2Sim, secrets: dict[str, str] | None = None, **params: Any) -> AwsCenter:
    driver = open_driver(
        "aws",
        {"region": REGION, "endpoint_url": ec2.url, "retries": 1, **params},
        KEYS if secrets is None else secrets,
    )
    assert isinstance(driver, AwsCenter)
    return driver


def _request(image: str, **parameters: Any) -> ProvisionRequest:
    return ProvisionRequest(
        name="aws-001",
        user_data="#!/bin/sh\necho hello\n",
        parameters={"image": image, "instance_type": "t3.micro", **parameters},
        metadata={
            "deskbroker_pool": "p1",
            DESKTOP_KEY: "d1",
            CENTER_KEY: "c-conformance",
            "deskbroker_enrol": "single-use-secret-value",
        },
        tags=("task-conformance",),
    )


@pytest.fixture
def driver(ec2: Ec2Sim) -> CenterDriver:
    ec2.seed(3)
    return _open(ec2)


@pytest.fixture
def provision_request(ec2: Ec2Sim) -> ProvisionRequest | None:
    return _request(ec2.image(), elastic_ip=True)


class TestAwsCenter(CenterConformance):
    """The shared contract, plus what only EC2 does."""


def test_inventory_follows_next_token_when_pages_are_smaller_than_asked(ec2: Ec2Sim) -> None:
    ids = ec2.seed(12)
    ec2.max_page = 2  # the endpoint gives 2 per page whatever was asked
    driver = _open(ec2, page_size=5)
    machines = driver.inventory()
    assert sorted(m.external_id for m in machines) == sorted(ids)
    assert ec2.calls["DescribeInstances"] == 6  # 12 instances, 2 a page
    assert all(m.power_state is PowerState.RUNNING and m.address for m in machines)


def test_inventory_filters_and_leaves_terminated_instances_out(ec2: Ec2Sim) -> None:
    mine = ec2.seed(2, team="vdi")
    ec2.seed(2, team="build")
    ec2.client().terminate_instances(InstanceIds=[mine[1]])
    driver = _open(ec2, inventory_filters={"tag:team": ["vdi"]})
    found = driver.inventory()
    assert [m.external_id for m in found] == [mine[0]]
    assert found[0].attributes["meta.team"] == "vdi"
    assert driver.machine(mine[1]) is None  # terminated is gone


def test_build_carries_tags_subnet_groups_and_no_secret(ec2: Ec2Sim) -> None:
    client = ec2.client()
    vpc = client.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    group = client.create_security_group(GroupName="vdi-rdp", Description="rdp", VpcId=vpc)
    driver = _open(ec2)
    request = _request("desktop-image", subnet=subnet, security_groups=["vdi-rdp"])
    ec2.image("desktop-image")
    instance_id = driver.create(request)
    raw = client.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert raw["SubnetId"] == subnet
    assert [g["GroupId"] for g in raw["SecurityGroups"]] == [group["GroupId"]]
    tags = {t["Key"]: t["Value"] for t in raw["Tags"]}
    assert tags["Name"] == "aws-001" and tags["deskbroker"] == "" and tags[DESKTOP_KEY] == "d1"
    assert tags["task-conformance"] == ""
    # The enrolment secret is no tag: anyone allowed ec2:DescribeTags would read it.
    assert "deskbroker_enrol" not in tags
    assert all("single-use-secret-value" not in v for v in tags.values())
    found = driver.find_tagged("task-conformance")
    assert [m.external_id for m in found] == [instance_id]
    assert found[0].desktop_id == "d1" and found[0].attributes["subnet"] == subnet


def test_unknown_names_and_missing_choices_are_clear(ec2: Ec2Sim) -> None:
    driver = _open(ec2)
    with pytest.raises(UnknownName, match="image 'no-such-image' not found"):
        driver.create(_request("no-such-image"))
    with pytest.raises(UnknownName, match="security group 'nope'"):
        driver.create(_request(ec2.image(), security_groups=["nope"]))
    with pytest.raises(CenterError, match="needs an image"):
        driver.create(ProvisionRequest(name="x", parameters={"instance_type": "t3.micro"}))
    assert ec2.live() == []


def test_instance_limit_is_the_shared_quota_error(ec2: Ec2Sim) -> None:
    driver = _open(ec2)
    ami = ec2.image()
    ec2.instance_limit = 1
    driver.create(_request(ami))
    with pytest.raises(QuotaExceeded, match="InstanceLimitExceeded"):
        driver.create(_request(ami))
    assert len(ec2.live()) == 1


def test_launch_template_builds(ec2: Ec2Sim) -> None:
    client = ec2.client()
    ami = ec2.image()
    template = client.create_launch_template(
        LaunchTemplateName="vdi-small",
        LaunchTemplateData={"ImageId": ami, "InstanceType": "t3.small"},
    )["LaunchTemplate"]
    driver = _open(ec2)
    assert template["LaunchTemplateId"] in {i.external_id for i in driver.images()}
    instance_id = driver.create(
        ProvisionRequest(name="lt-1", parameters={"launch_template": "vdi-small"})
    )
    found = driver.machine(instance_id)
    assert found is not None and found.attributes["image"] == ami


def test_suspend_needs_hibernation(ec2: Ec2Sim) -> None:
    driver = _open(ec2)
    ami = ec2.image()
    plain = driver.machine(driver.create(_request(ami)))
    assert plain is not None
    with pytest.raises(CenterError, match="not built for hibernation"):
        driver.power(plain, PowerAction.SUSPEND)
    ready = driver.machine(driver.create(_request(ami, hibernation=True)))
    assert ready is not None and ready.driver_state["hibernation"] is True
    driver.power(ready, PowerAction.SUSPEND)
    wait_until(
        lambda: (
            (m := driver.machine(ready.external_id)) is not None
            and m.power_state in (PowerState.SUSPENDED, PowerState.STOPPED)
        )
    )
    driver.power(ready, PowerAction.RESUME)
    wait_until(
        lambda: (
            (m := driver.machine(ready.external_id)) is not None
            and m.power_state is PowerState.RUNNING
        )
    )


def test_terminate_releases_the_elastic_ip(ec2: Ec2Sim) -> None:
    driver = _open(ec2)
    request = _request(ec2.image(), elastic_ip=True)
    instance_id = driver.create(request)
    address = driver.attach_address(instance_id, request)
    assert driver.attach_address(instance_id, request) == address  # a retried step
    client = ec2.client()
    assert [a["PublicIp"] for a in client.describe_addresses()["Addresses"]] == [address]
    found = driver.machine(instance_id)
    assert found is not None and found.address == address
    driver.terminate(found)
    assert client.describe_addresses()["Addresses"] == []
    driver.terminate(found)  # already gone: not an error


def test_bad_credentials_and_params_are_clear(ec2: Ec2Sim) -> None:
    with pytest.raises(CenterError, match="access_key_id and secret_access_key"):
        _open(ec2, secrets={}).inventory()
    for bad in (
        {"region": "mars"},
        {"region": REGION, "endpoint_url": "ftp://x"},
        {"region": REGION, "page_size": 1},
        {"region": REGION, "inventory_filters": {"instance-state-name": ["running"]}},
        {"region": REGION, "unknown": 1},
    ):
        with pytest.raises(InvalidInput, match="center params: "):
            validate_params("aws", bad)


def test_a_silent_endpoint_costs_one_timeout_not_more(ec2: Ec2Sim) -> None:
    """An endpoint that accepts and never answers: the call ends at the center's
    ``timeout_s`` (botocore's read timeout and retries included)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        driver = _open(ec2, endpoint_url=f"http://127.0.0.1:{port}", timeout_s=1.0, retries=3)
        with pytest.raises(AwsFailure, match="did not answer within 1 s"):
            driver.inventory()
    finally:
        stop.set()
        thread.join()
        for sock in held:
            sock.close()
        listener.close()


def test_secrets_are_never_logged(ec2: Ec2Sim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    driver = _open(ec2)
    driver.inventory()
    with pytest.raises(CenterError):
        driver.create(_request("no-such-image"))
    assert KEYS["secret_access_key"] not in caplog.text
    assert KEYS["secret_access_key"] not in repr(driver.session.__dict__.get("params"))


def test_outbound_policy_refuses_a_denied_endpoint(ec2: Ec2Sim) -> None:
    from deskbroker import outbound
    from deskbroker.outbound import OutboundPolicy

    before = outbound.current()
    outbound.install(OutboundPolicy())  # the default: loopback denied
    try:
        with pytest.raises(AwsFailure, match="outbound policy"):
            _open(ec2).inventory()
    finally:
        outbound.install(before)


def test_the_documented_iam_policy_allows_every_call_the_driver_makes() -> None:
    """docs/centers/aws-iam-policy.json (and the copy in aws.md) name every EC2 operation
    the driver's code calls, and no operation it never calls."""
    root = Path(__file__).resolve().parents[2]
    code = "".join(p.read_text() for p in (root / "src/deskbroker/centers/aws").glob("*.py"))
    called = set(re.findall(r'(?:call|pages)\(\s*"([A-Z][A-Za-z]+)"', code))
    assert {"RunInstances", "DescribeInstances", "TerminateInstances"} <= called
    policy = json.loads((root / "docs/centers/aws-iam-policy.json").read_text())
    allowed: set[str] = set()
    for statement in policy["Statement"]:
        actions = statement["Action"]
        allowed |= {actions} if isinstance(actions, str) else set(actions)
    # CreateTags is what tagging at creation (TagSpecifications) is authorised as.
    assert {f"ec2:{op}" for op in called} | {"ec2:CreateTags"} == allowed
    page = (root / "docs/centers/aws.md").read_text()
    inline = json.loads(page.split("```json\n", 1)[1].split("```", 1)[0])
    assert inline == policy
