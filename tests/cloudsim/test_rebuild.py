"""Nova's rebuild action in cloudsim, driven through openstacksdk and raw HTTP: the
phases, the image change, the power state kept, and the refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cloudsim.server import CloudSim
from tests.cloudsim.conftest import http, token_for
from tests.cloudsim.test_compute import _states, _stopped_clock


@pytest.fixture(autouse=True)
def _golden(sim: CloudSim) -> None:
    sim.seed_images(1, name_prefix="golden")


def _other_image(conn: Any) -> Any:
    return next(i for i in conn.image.images() if i.name.startswith("golden-"))


def test_rebuild_goes_through_rebuild_and_changes_the_image(
    sim: CloudSim, conn: Any, boot: Callable[..., Any]
) -> None:
    server = boot("golden")
    before = conn.compute.get_server(server.id)
    image = _other_image(conn)
    _stopped_clock(sim)
    rebuilt = conn.compute.rebuild_server(server, image=image.id)
    assert rebuilt.id == server.id
    seen = _states(sim, conn, server.id, "ACTIVE")
    assert seen[0] == ("REBUILD", "rebuilding") and seen[-1] == ("ACTIVE", None)
    after = conn.compute.get_server(server.id)
    assert after.image["id"] == image.id != before.image["id"]
    # Same machine: its name, addresses and flavor stay.
    assert (after.name, after.addresses) == (before.name, before.addresses)


def test_rebuild_answers_202_with_the_server_in_rebuild(
    sim: CloudSim, conn: Any, boot: Callable[..., Any]
) -> None:
    server = boot("answer")
    _stopped_clock(sim)
    status, _, body = http(
        "POST",
        f"{sim.url}/compute/v2.1/servers/{server.id}/action",
        {"rebuild": {"imageRef": _other_image(conn).id}},
        headers={"X-Auth-Token": token_for(sim)},
    )
    assert status == 202
    assert body["server"]["status"] == "REBUILD"


@pytest.mark.parametrize(("setup", "settles"), [("SHUTOFF", "SHUTOFF"), ("ERROR", "ACTIVE")])
def test_a_stopped_server_stays_stopped_and_a_failed_one_is_repaired(
    sim: CloudSim, conn: Any, boot: Callable[..., Any], setup: str, settles: str
) -> None:
    server = boot("kept")
    sim.set_server_state(server.id, setup, "broken" if setup == "ERROR" else None)
    _stopped_clock(sim)
    conn.compute.rebuild_server(server, image=_other_image(conn).id)
    seen = _states(sim, conn, server.id, settles)
    assert seen[0] == ("REBUILD", "rebuilding") and seen[-1] == (settles, None)


@pytest.mark.parametrize(
    ("setup", "body", "code", "message"),
    [
        ("SUSPENDED", None, 409, "while it is in vm_state suspended"),
        ("ACTIVE", {"imageRef": "no-such-image"}, 400, "could not be found"),
        ("ACTIVE", {}, 400, "'imageRef' is a required property"),
        ("ACTIVE", "cirros", 400, "Invalid input for field/attribute rebuild"),
        ("ACTIVE", "ubuntu-22.04-desktop", 400, "Flavor's disk is too small"),
    ],
)
def test_refusals(
    sim: CloudSim,
    conn: Any,
    boot: Callable[..., Any],
    setup: str,
    body: Any,
    code: int,
    message: str,
) -> None:
    server = boot("refused")
    if setup != "ACTIVE":
        sim.set_server_state(server.id, setup)
    if body is None:
        body = {"imageRef": _other_image(conn).id}
    elif body == "ubuntu-22.04-desktop":  # 10 GB minimum on m1.tiny's 1 GB disk
        body = {"imageRef": conn.image.find_image(body).id}
    resp = conn.compute.post(f"/servers/{server.id}/action", json={"rebuild": body})
    assert resp.status_code == code, resp.text
    assert message in resp.text
    assert conn.compute.get_server(server.id).image["id"] != _other_image(conn).id
