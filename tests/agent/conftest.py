"""A cloudsim whose instances run real Xvnc desktops, an engine that builds them, and a
broker on a real port for agent processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudsim.server import CloudSim
from deskbroker.bootstrap import add_local_user
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from tests.agent_process import AgentProcess, LiveBroker
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.helpers import USER_PASSWORD, Api, cloud_networks, wait_until
from tests.tools import VNCPASSWD, XVNC, require


@pytest.fixture(scope="module")
def xsim() -> Iterator[CloudSim]:
    require(XVNC, VNCPASSWD)
    simulator = CloudSim(
        projects=["demo"],
        clock_speed=40.0,
        backing="xvnc",
        quota={"instances": 500, "cores": 2000, "ram": 10_000_000},
        **cloud_networks(),
    ).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def sim(xsim: CloudSim) -> CloudSim:
    xsim.reset()
    return xsim


@pytest.fixture
def engine(ctx: BrokerContext) -> Iterator[Engine]:
    eng = Engine(ctx, workers=8)
    eng.recover()
    yield eng
    eng.stop()


@pytest.fixture
def broker(ctx: BrokerContext) -> Iterator[LiveBroker]:
    live = LiveBroker(ctx).start()
    yield live
    live.stop()


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def built_pool(
    api: Api,
    sim: CloudSim,
    engine: Engine,
    n: int,
    *,
    users: int = 1,
    entry: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """An OpenStack pool of ``n`` desktops the engine built, a policy over it, users."""
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=n, m=n)
    policy = api.post(
        "policies",
        {
            "name": "agents",
            "entries": [{"pool_id": pool["id"], "assignment": "persistent", **(entry or {})}],
        },
    )
    api.post(
        "assignment-rules",
        {"identity_source_id": api.source_id(), "name": "everyone", "policy_id": policy["id"]},
    )
    for i in range(users):
        add_local_user(api.ctx, f"user{i}", USER_PASSWORD)
    api.ids.update(center=center["id"], pool=pool["id"], policy=policy["id"])

    def ready() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = api.get(f"desktops?center_id={center['id']}&limit=1000")[
            "items"
        ]
        # Handed over to the pool, not only seen: a scan may import a finished build's
        # machine before the engine hands it over, and a login then finds no desktop.
        members = {m["id"] for m in api.get(f"pools/{pool['id']}/members")["items"]}
        done = [
            d
            for d in items
            if d["power_state"] == "running"
            and d["address"]
            and d["availability"] == "available"
            and d["id"] in members
        ]
        return items if len(done) == n else None

    run_until(engine, lambda: ready() is not None, timeout_s=240)
    desktops = ready()
    assert desktops is not None
    return desktops


def xvnc_of(sim: CloudSim, server_id: str) -> dict[str, Any]:
    """The Xvnc desktop behind an instance: its address, display and log file."""
    assert sim.backing is not None
    # Under load the Xvnc start (and its retries on another display) can take long: wait
    # for it to finish, so the display read below is the one that stays.
    assert sim.backing.wait_idle(60), "the Xvnc starts did not finish"
    found = wait_until(
        lambda: (
            next(
                (d for d in sim.backing.desktops() if d["server_id"] == server_id and d["running"]),
                None,
            )
            if sim.backing is not None
            else None
        ),
        f"the Xvnc desktop of {server_id}",
        timeout_s=30,
    )
    assert found is not None
    display = found["display"]
    return {**found, "log": str(sim.backing.workdir / f"xvnc-{display}.log")}


def agent_for(
    tmp: Path, sim: CloudSim, broker: LiveBroker, desktop: dict[str, Any], **extra: Any
) -> AgentProcess:
    """An agent process inside the desktop's instance: bound to its address."""
    xvnc = xvnc_of(sim, desktop["external_id"])
    settings: dict[str, Any] = {
        "broker_url": broker.url,
        "metadata_url": sim.metadata_url,
        "source_address": xvnc["address"],
        "sources": "xvnc",
        "x_display": f":{xvnc['display']}",
        "xvnc_log": xvnc["log"],
        "heartbeat_s": 0.5,
        "poll_s": 0.2,
        "idle_threshold_s": 3,
        "retry_s": 0.2,
        "retry_max_s": 1,
        "request_timeout_s": 5,
        **extra,
    }
    return AgentProcess(tmp / f"agent-{desktop['name']}", settings)
