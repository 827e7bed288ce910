"""The cluster on PostgreSQL with real ``deskbroker serve`` processes: a node runs its
engine once behind several HTTP workers, lists itself by heartbeat, and when it dies
(SIGKILL: no goodbye) another node reaps it and takes its work over, well before the
leases it held would have run out. ``benchmarks/failover.py`` measures the same at will.

In-process, on the run's database: the heartbeat and the reaping themselves, and the
fence (a reaped node cannot record the outcome of work it lost).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from deskbroker.api.app import create_app
from deskbroker.bootstrap import ensure_defaults
from deskbroker.config import Settings
from deskbroker.engine.nodes import NodeHeartbeat
from deskbroker.services.context import BrokerContext
from deskbroker.store import leases, nodes
from deskbroker.store.jobs import JobKind
from deskbroker.store.tables import BrokerNode, Job, utcnow
from tests.broker_process import BrokerNode as NodeProcess
from tests.broker_process import fresh_pg_database, running_node, start_node
from tests.conftest import LOOPBACK
from tests.helpers import Api, wait_until
from tests.tarpit import Tarpit, tarpit

SECRET = "test-secret-" + uuid.uuid4().hex
METRICS_TOKEN = "test-metrics-" + uuid.uuid4().hex
# The defaults an operator runs: a beat a second, dead after five silent seconds.
DEAD_AFTER_S = Settings().node_dead_after_s
TAKEOVER_TARGET_S = 10.0


@pytest.fixture
def cluster_db() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def admin(cluster_db: str, tmp_path: Path) -> Iterator[Api]:
    """The admin API in-process on the cluster's database (no engine here: the nodes
    run it)."""
    settings = Settings(
        data_dir=tmp_path / "admin-data",
        database_url=cluster_db,
        secret_key=SECRET,
        outbound_allow=LOOPBACK,
        argon2_time_cost=1,
        argon2_memory_kib=64,
        engine=False,
    )
    ctx = BrokerContext.from_settings(settings)
    ensure_defaults(ctx)
    with TestClient(create_app(ctx)) as client:
        yield Api.with_admin(client, ctx)
    ctx.db.dispose()


def _node_ids(api: Api) -> dict[str, dict[str, object]]:
    return {row["broker_id"]: row for row in api.get("nodes")["items"]}


def _scan_owner(api: Api, center_id: str) -> str | None:
    with api.ctx.db.read() as session:
        return session.scalar(
            select(Job.lease_owner).where(
                Job.kind == JobKind.SCAN_CENTER.value, Job.target_id == center_id
            )
        )


def _hanging_center(api: Api, pit: Tarpit) -> str:
    center = api.post(
        "centers",
        {
            "name": "hangs",
            "kind": "openstack",
            "params": {
                "auth_url": f"{pit.url}/v3",
                "project_name": "demo",
                "username": "demo",
                # The scan hangs on the cloud for longer than the test: its lease is held.
                "timeout_s": 300,
            },
            "secrets": {"password": "password"},
            "scan_interval_s": 600,
        },
    )
    return str(center["id"])


def _children(node: NodeProcess) -> list[int]:
    out = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(node.proc.pid)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    # multiprocessing's spawn starts a resource tracker too: the workers are the rest.
    return [
        int(line.split()[0])
        for line in out.splitlines()
        if line.strip() and "resource_tracker" not in line
    ]


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start(tmp: Path, url: str, name: str, *args: str) -> NodeProcess:
    return start_node(tmp, database_url=url, secret_key=SECRET, name=name, args=args)


def test_a_node_runs_its_engine_once_behind_several_workers(
    tmp_path: Path, cluster_db: str, admin: Api
) -> None:
    with running_node(
        tmp_path,
        database_url=cluster_db,
        secret_key=SECRET,
        name="wide",
        args=("--workers", "2"),
        env={"DESKBROKER_METRICS_TOKEN": METRICS_TOKEN},
    ) as node:
        wait_until(lambda: len(_children(node)) == 2, lambda: f"two workers: {_children(node)}")
        listed = wait_until(lambda: _node_ids(admin).get("wide"), "the node to be listed")
        assert listed["http_workers"] == 2
        assert listed["pid"] == node.proc.pid
        # One node, whatever its workers: the engine and the heartbeat run once.
        assert len(admin.get("nodes")["items"]) == 1
        # The workers answer through the one socket, and /metrics (whichever worker
        # answers it) counts the node's requests, not one worker's.
        auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}

        def answered() -> float:
            text = httpx.get(f"{node.url}/metrics", headers=auth, timeout=5).text
            found = re.search(
                r'^deskbroker_http_requests_total\{method="GET",status="2xx"\} (\S+)$',
                text,
                re.MULTILINE,
            )
            assert found, text[:2000]
            return float(found.group(1))

        before = answered()
        for _ in range(20):
            assert httpx.get(f"{node.url}/readyz", timeout=5).status_code == 200
        # The 20, and the first /metrics itself (counted once it answered); one worker
        # alone would count about half. A start-up /healthz the client gave up on under a
        # loaded CI may still be counted meanwhile: a little more is fine.
        assert 21 <= answered() - before <= 24

        # The node's process alone is killed (the OOM killer's way): its workers do not
        # stay behind answering without it.
        workers = _children(node)
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=10)
        wait_until(
            lambda: not any(_alive(pid) for pid in workers), "the workers to die with their node"
        )


def test_a_killed_node_is_reaped_and_its_work_taken_over_within_ten_seconds(
    tmp_path: Path, cluster_db: str, admin: Api
) -> None:
    with tarpit() as pit:
        first = _start(tmp_path, cluster_db, "first")
        second: NodeProcess | None = None
        try:
            first_id = str(wait_until(lambda: _node_ids(admin).get("first"), "first")["id"])
            center_id = _hanging_center(admin, pit)
            # The first node's engine scans the center and hangs there, holding the lease.
            wait_until(lambda: _scan_owner(admin, center_id) == first_id, "the first's scan")
            wait_until(lambda: pit.accepted > 0, "the scan to reach the cloud")
            second = _start(tmp_path, cluster_db, "second")
            second_id = str(wait_until(lambda: _node_ids(admin).get("second"), "second")["id"])
            reached = pit.accepted

            # Still the first's, hanging: what follows is a takeover, not a release.
            assert _scan_owner(admin, center_id) == first_id
            first.kill()
            killed = time.monotonic()
            wait_until(
                lambda: _scan_owner(admin, center_id) == second_id,
                lambda: (
                    f"the second node to take the scan over (held by "
                    f"{_scan_owner(admin, center_id)})"
                ),
                timeout_s=30,
            )
            takeover_s = time.monotonic() - killed
            print(f"takeover after SIGKILL: {takeover_s:.2f} s")
            # Taken over because the second node reaped the first, after the kill.
            assert f"reaped 1 silent node(s) {first_id}" in second.output(), second.output()
            # The lease would have lasted a minute; the reaping freed it after the
            # node's silence (DEAD_AFTER_S) and a beat of the second node.
            assert takeover_s < TAKEOVER_TARGET_S < Settings().lease_ttl_s
            # The second node runs the scan itself: it reaches the cloud again.
            wait_until(lambda: pit.accepted > reached, "the second node's scan")
            assert set(_node_ids(admin)) == {"second"}
        finally:
            first.kill()
            if second is not None:
                second.stop()


# --- in-process: the heartbeat, the reaping and the fence ------------------------------
def test_a_silent_node_is_reaped_once_and_its_leases_freed(ctx: BrokerContext) -> None:
    live = NodeHeartbeat(ctx, "live:00000001")
    silent = nodes.NodeInfo("gone:00000002", "gone", "host", 1, 1, "0", utcnow())
    long_ago = utcnow() - timedelta(seconds=ctx.settings.node_dead_after_s + 1)
    with ctx.db.connect_write() as conn:
        nodes.beat(conn, silent, long_ago)
    with ctx.db.write() as session:
        ensure_job = Job(kind=JobKind.RETENTION.value, target_id="")
        session.add(ensure_job)
        session.flush()
        job_id = ensure_job.id
        taken = leases.claim_due(
            session, Job, Job.next_run_at, owner=silent.id, now=utcnow(), ttl_s=600
        )
        assert taken == [job_id]

    reaped = live.beat_once()
    assert reaped == nodes.Reaped([silent.id], 1)
    with ctx.db.read() as session:
        assert session.scalars(select(BrokerNode.id)).all() == [live.node_id]
        job = session.get(Job, job_id)
        assert job is not None and job.lease_owner is None and job.lease_expires_at is None
    # Reaped once: the next beat finds nothing more to reap.
    assert live.beat_once() == nodes.Reaped([], 0)

    # The fence: the reaped node, back from its stall, cannot record that job's outcome.
    with ctx.db.write() as session:
        assert not leases.release(session, Job, job_id, silent.id, runs=99)
    with ctx.db.connect_write() as conn:
        nodes.beat(conn, silent, utcnow())  # it beats again: listed again, leases lost
    with ctx.db.read() as session:
        assert set(session.scalars(select(BrokerNode.id))) == {live.node_id, silent.id}
        job = session.get(Job, job_id)
        assert job is not None and job.runs == 0 and job.lease_owner is None

    # A clean stop leaves the cluster at once.
    live.stop()
    with ctx.db.read() as session:
        assert session.scalars(select(BrokerNode.id)).all() == [silent.id]
