"""An OpenStack center on cloudsim, configured through the admin API, and an engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from cloudsim.server import CloudSim
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Center
from tests.helpers import Api, wait_until

SPEED = 40.0


@pytest.fixture(scope="module")
def sim() -> Iterator[CloudSim]:
    simulator = CloudSim(
        projects=["demo"],
        clock_speed=SPEED,
        quota={"instances": 500, "cores": 2000, "ram": 10_000_000},
    ).start()
    yield simulator
    simulator.stop()


@pytest.fixture(autouse=True)
def _fresh(sim: CloudSim) -> None:
    sim.reset()


@pytest.fixture
def engine(ctx: BrokerContext) -> Iterator[Engine]:
    eng = Engine(ctx, workers=24)
    eng.recover()
    yield eng
    eng.stop()


def openstack_center(api: Api, sim: CloudSim, **params: Any) -> dict[str, Any]:
    return api.post(
        "centers",
        {
            "name": "cloud",
            "kind": "openstack",
            "params": {
                "auth_url": sim.auth_url,
                "project_name": "demo",
                "username": "demo",
                "default_network": "private",
                "retry_base_s": 0.01,
                **params,
            },
            "secrets": {"password": "password"},
            "scan_interval_s": 5,
        },
    )


def provisioning_pool(api: Api, center_id: str, *, n: int, m: int, **extra: Any) -> dict[str, Any]:
    return api.post(
        "pools",
        {
            "name": "auto",
            "center_ids": [center_id],
            "provisioning": {
                "enabled": True,
                "min_unassigned": n,
                "max_total": m,
                "parameters": {
                    "name_template": "vdi-{SEQUENCE:3}",
                    "image": "cirros-0.6.2-x86_64-disk",
                    "flavor": "m1.tiny",
                },
                **extra,
            },
        },
    )


def run_until(
    engine: Engine,
    done: Callable[[], bool],
    timeout_s: float = 60.0,
    tick_s: float = 0.05,
    clock: Callable[[], datetime] | None = None,
    what: str | Callable[[], str] = "the engine to get there",
) -> int:
    """Tick the engine until ``done()``; returns the ticks it took. Each tick is told the
    time by ``clock`` when given (a test that moved the engine to another moment keeps it
    there), else the engine reads the real one."""
    ticks = 0

    def tick() -> bool:
        nonlocal ticks
        engine.run_once(clock() if clock else None)
        ticks += 1
        return done()

    wait_until(tick, what, timeout_s=timeout_s, interval_s=tick_s)
    return ticks


def next_scan_full(api: Api, center_id: str) -> None:
    """The center's next scan is a full one, as after an un-forget (the full scan
    interval is an hour away)."""
    with api.ctx.db.write() as session:
        row = session.get(Center, center_id)
        assert row is not None
        row.last_full_scan_at = None


def held_unseen(api: Api, center_id: str) -> list[str]:
    """The external ids the center's last full scan did not see and kept."""
    with api.ctx.db.read() as session:
        row = session.get(Center, center_id)
        assert row is not None
        return sorted(row.held_unseen or [])
