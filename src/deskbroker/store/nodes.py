"""The cluster's nodes: heartbeats, and the reaping of a node that stopped beating.

A node's id is its lease owner, so reaping a node frees exactly the leases it held
(jobs, timers, provisioning tasks): the live nodes claim that work on their next tick
instead of waiting for the leases to run out. A node that was only slow (its row reaped
while it lived) writes its row again at its next beat; the leases it lost stay lost,
and ``leases.release`` refuses the outcome of work it no longer holds (the fence).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update

from deskbroker.store import leases
from deskbroker.store.tables import BrokerNode, Job, ProvisioningTask, Timer, WebhookDelivery

NODES = leases.table_of(BrokerNode)
# Webhook deliveries too: a dead node's posts are made again at once (receivers dedup).
LEASED = (Job, Timer, ProvisioningTask, WebhookDelivery)


@dataclass(frozen=True)
class NodeInfo:
    """What a node says about itself when it beats."""

    id: str
    broker_id: str
    host: str
    pid: int
    http_workers: int
    version: str
    started_at: datetime


def beat(conn: leases.Unit, node: NodeInfo, now: datetime) -> None:
    """Write the node's heartbeat, (re)registering it when its row is missing (first
    beat, or reaped by another node while it was too slow to beat)."""
    result = conn.execute(update(NODES).where(NODES.c.id == node.id).values(heartbeat_at=now))
    if result.rowcount:  # type: ignore[attr-defined]
        return
    conn.execute(
        insert(NODES).values(
            id=node.id,
            broker_id=node.broker_id,
            host=node.host,
            pid=node.pid,
            http_workers=node.http_workers,
            version=node.version,
            started_at=node.started_at,
            heartbeat_at=now,
        )
    )


def free_leases(conn: leases.Unit, owners: list[str]) -> int:
    """Free every lease held by one of ``owners``; returns how many were freed."""
    freed = 0
    for model in LEASED:
        table = leases.table_of(model)
        result = conn.execute(
            update(table)
            .where(table.c.lease_owner.in_(owners))
            .values(lease_owner=None, lease_expires_at=None)
        )
        freed += int(result.rowcount)  # type: ignore[attr-defined]
    return freed


@dataclass(frozen=True)
class Reaped:
    """The nodes one reaping removed, and how many leases they held."""

    nodes: list[str]
    leases: int


def reap(conn: leases.Unit, now: datetime, dead_after_s: float, keep: str) -> Reaped:
    """Remove the nodes silent for ``dead_after_s`` (never ``keep``, the caller) and free
    their leases. Two nodes reaping at once free each lease once: the delete of a row
    takes its lock, the second delete finds it gone."""
    cutoff = now - timedelta(seconds=dead_after_s)
    gone = [
        str(row[0])
        for row in conn.execute(
            delete(NODES)
            .where(NODES.c.heartbeat_at < cutoff, NODES.c.id != keep)
            .returning(NODES.c.id)
        ).all()
    ]
    if not gone:
        return Reaped([], 0)
    return Reaped(gone, free_leases(conn, gone))


def leave(conn: leases.Unit, node_id: str) -> None:
    """A node stopping cleanly: its row goes, and its leases with it."""
    conn.execute(delete(NODES).where(NODES.c.id == node_id))
    free_leases(conn, [node_id])


def live_versions(conn: leases.Unit, now: datetime, dead_after_s: float) -> dict[str, str]:
    """The version each node that beat within ``dead_after_s`` runs, by node id."""
    since = now - timedelta(seconds=dead_after_s)
    rows = conn.execute(select(NODES.c.id, NODES.c.version).where(NODES.c.heartbeat_at >= since))
    return {str(node_id): str(version) for node_id, version in rows}
