"""This node's heartbeat in the cluster, and the reaping of nodes that stopped beating.

One thread per node (``deskbroker serve``, whatever its number of HTTP workers): every
``heartbeat_interval_s`` it writes the node's heartbeat and reaps the nodes silent for
``node_dead_after_s``, freeing their leases so this node's engine (or any other's) takes
their jobs, timers and builds over on its next tick. No leader: every node reaps, and a
dead node is reaped once (see ``store.nodes.reap``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from deskbroker import __version__
from deskbroker.services.context import BrokerContext
from deskbroker.store import nodes
from deskbroker.store.tables import utcnow

log = logging.getLogger("deskbroker.nodes")


class NodeHeartbeat:
    """Keeps this node's row in ``broker_nodes`` alive and reaps the dead ones.

    ``node_id`` is the engine's lease owner, so the leases this node takes name it."""

    def __init__(self, ctx: BrokerContext, node_id: str, *, http_workers: int = 1) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.interval_s = settings.heartbeat_interval_s
        self.dead_after_s = settings.node_dead_after_s
        self.info = nodes.NodeInfo(
            id=node_id,
            broker_id=settings.broker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            http_workers=http_workers,
            version=__version__,
            started_at=utcnow(),
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def node_id(self) -> str:
        return self.info.id

    def start(self) -> None:
        """The first beat is written before this returns: the node is listed at once."""
        self.beat_once()
        self._thread = threading.Thread(target=self._loop, name="node-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and leave the cluster: the row goes and the leases are freed, so
        the other nodes take this node's work over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            with self.ctx.db.connect_write() as conn:
                nodes.leave(conn, self.node_id)
        except Exception:
            # The database is down: the others reap this node once it is back.
            log.warning("could not leave the cluster cleanly", exc_info=True)

    def beat_once(self) -> nodes.Reaped:
        """One beat and one reaping; returns what was reaped."""
        now = utcnow()
        with self.ctx.db.connect_write() as conn:
            nodes.beat(conn, self.info, now)
            reaped = nodes.reap(conn, now, self.dead_after_s, keep=self.node_id)
        if reaped.nodes:
            log.warning(
                "reaped %d silent node(s) %s; freed %d lease(s) for takeover",
                len(reaped.nodes),
                ", ".join(reaped.nodes),
                reaped.leases,
            )
        return reaped

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat_once()
            except Exception:
                # A database outage: beat again next time; the others wait for us as long
                # as they cannot reach it either.
                log.warning("heartbeat failed", exc_info=True)
