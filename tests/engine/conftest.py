"""An OpenStack center on cloudsim, configured through the admin API, and an engine."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from cloudsim.server import CloudSim
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Center, Desktop, Job, ProvisioningTask
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
    began = time.monotonic()

    def tick() -> bool:
        nonlocal ticks
        engine.run_once(clock() if clock else None)
        ticks += 1
        return done()

    def said() -> str:
        # A wait that timed out says where the engine stood, so a failure seen once (in
        # CI, under load) tells why without a rerun.
        waited = what() if callable(what) else what
        took = time.monotonic() - began
        return f"{waited} ({ticks} ticks in {took:.1f} s)\n{engine_report(engine)}"

    wait_until(tick, said, timeout_s=timeout_s, interval_s=tick_s)
    return ticks


def engine_report(engine: Engine) -> str:
    """Where an engine stands: its workers and turns, each center's build watcher, and
    the database's open tasks, desktops and failing jobs, grouped."""
    lines = [
        f"now {time.strftime('%H:%M:%S', time.gmtime())}; workers busy "
        f"{engine._busy()} of {engine.workers}; turns out {engine.turns.out}; held "
        f"{ {m.__name__: len(ids) for m, ids in engine._held.items()} }"
    ]
    for center_id, watcher in list(engine.drivers._watchers.items()):
        lines.append(
            f"watcher {center_id}: cursor {watcher._cursor!r}, since {watcher.watching_since}, "
            f"listings {watcher._listings}, listing out {watcher._listing}, lead "
            f"{watcher.lead_s}, expected {watcher.expected_build_s}, building "
            f"{len(watcher._building)}, finished {len(watcher._finished)}, seen "
            f"{len(watcher._seen)}, mine {len(watcher._mine)}"
        )
    with engine.ctx.db.read() as session:
        tasks = session.execute(
            select(
                ProvisioningTask.state,
                ProvisioningTask.lease_owner,
                func.count(),
                func.min(ProvisioningTask.next_step_at),
                func.max(ProvisioningTask.next_step_at),
                func.max(ProvisioningTask.lease_expires_at),
                func.max(ProvisioningTask.attempts),
                func.max(ProvisioningTask.last_error),
            ).group_by(ProvisioningTask.state, ProvisioningTask.lease_owner)
        ).all()
        desktops = session.execute(
            select(Desktop.availability, Desktop.power_state, func.count()).group_by(
                Desktop.availability, Desktop.power_state
            )
        ).all()
        jobs = session.execute(
            select(Job.kind, Job.lease_owner, Job.next_run_at, Job.failures, Job.last_error)
            .where((Job.failures > 0) | (Job.lease_owner.is_not(None)))
            .limit(20)
        ).all()
    lines.append(f"engine {engine.owner}; tasks (state, lease, n, next step from/to, lease")
    lines.append("  until, attempts, an error):")
    lines += [f"  {tuple(map(str, row))}" for row in tasks]
    lines.append(f"desktops (availability, power, n): {[tuple(r) for r in desktops]}")
    lines += [f"job leased or failing: {tuple(map(str, row))}" for row in jobs]
    return "\n".join(lines)


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
