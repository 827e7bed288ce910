"""SIGKILL a broker in the middle of provisioning: a restart finishes the work exactly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from cloudsim.server import CloudSim
from deskbroker.config import Settings
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Desktop, PoolMember, ProvisioningTask
from tests.engine.conftest import openstack_center, provisioning_pool
from tests.helpers import Api, wait_until

DESKTOPS = 50


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _broker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DESKBROKER_SECRET_KEY": settings.secret_key,
        "DESKBROKER_OUTBOUND_ALLOW": settings.outbound_allow,
        "DESKBROKER_BROKER_ID": "broker-crash",
        "DESKBROKER_PROVISION_POLL_S": "0.1",
        "DESKBROKER_PROVISION_RETRY_BASE_S": "0.1",
        "DESKBROKER_ENGINE_TICK_S": "0.1",
        "DESKBROKER_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deskbroker.cli",
            "serve",
            "--port",
            str(_port()),
            "--db",
            settings.effective_database_url,
            "--data-dir",
            str(settings.data_dir),
        ],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_sigkill_mid_provisioning_leaves_no_orphan_and_no_duplicate(
    api: Api, ctx: BrokerContext, settings: Settings, sim: CloudSim, tmp_path: Path
) -> None:
    # Slow creations down so the kill lands while requests are in flight.
    sim.add_latency(0.15, method="POST", path="/servers")
    center = openstack_center(api, sim, max_in_flight=20)
    pool = provisioning_pool(api, center["id"], n=DESKTOPS, m=DESKTOPS)
    log = tmp_path / "broker.log"

    def servers() -> int:
        return len([s for s in sim.servers("demo") if s["status"] != "DELETED"])

    def in_flight() -> int:
        with ctx.db.read() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(ProvisioningTask)
                    .where(ProvisioningTask.state.in_(("creating", "waiting", "addressing")))
                )
                or 0
            )

    broker = _broker(settings, log)
    try:
        wait_until(
            lambda: servers() >= 10 and in_flight() > 0,
            lambda: f"{servers()} servers, {in_flight()} in flight\n{log.read_text()[-2000:]}",
            timeout_s=60,
        )
    finally:
        broker.send_signal(signal.SIGKILL)
        broker.wait(10)
    killed_with = servers()
    assert 0 < killed_with < DESKTOPS, "the kill should land mid-provisioning"

    broker = _broker(settings, log)
    try:

        def converged() -> bool:
            with ctx.db.read() as session:
                ready = session.scalar(
                    select(func.count())
                    .select_from(Desktop)
                    .join(PoolMember, PoolMember.desktop_id == Desktop.id)
                    .where(
                        PoolMember.pool_id == pool["id"],
                        Desktop.availability == "available",
                        Desktop.power_state == "running",
                    )
                )
            return ready == DESKTOPS

        def stuck() -> str:
            # What did not converge: the desktops' states and the open tasks' leases.
            with ctx.db.read() as session:
                desktops = session.execute(
                    select(Desktop.availability, Desktop.power_state, func.count()).group_by(
                        Desktop.availability, Desktop.power_state
                    )
                ).all()
                open_tasks = session.execute(
                    select(
                        ProvisioningTask.state,
                        ProvisioningTask.lease_owner,
                        func.count(),
                        func.min(ProvisioningTask.next_step_at),
                        func.max(ProvisioningTask.lease_expires_at),
                    )
                    .where(ProvisioningTask.state.not_in(("ready", "failed")))
                    .group_by(ProvisioningTask.state, ProvisioningTask.lease_owner)
                ).all()
            return (
                f"{servers()} servers; desktops {[tuple(r) for r in desktops]}; "
                f"open tasks {[tuple(map(str, r)) for r in open_tasks]}\n"
                f"{log.read_text()[-2000:]}"
            )

        wait_until(converged, stuck, timeout_s=120)
    finally:
        broker.terminate()
        broker.wait(20)

    live = {
        s["id"]
        for s in sim.servers("demo")
        if s["status"] != "DELETED" and s["task_state"] != "deleting"
    }
    with ctx.db.read() as session:
        recorded = session.scalars(select(Desktop.external_id)).all()
    assert len(recorded) == DESKTOPS
    assert len(set(recorded)) == DESKTOPS, "a desktop was recorded twice"
    assert set(recorded) == live, f"orphans in the cloud: {live - set(recorded)}"
    assert len(live) == DESKTOPS, log.read_text()[-3000:]
