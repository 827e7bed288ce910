"""The app of one HTTP worker process of ``deskbroker serve --workers N``.

uvicorn spawns the workers (fresh interpreters, nothing inherited but the environment)
and each imports this factory. The node's engine and heartbeat run once, in the parent
process that holds the socket; the workers only answer requests, so their settings turn
the engine off whatever the configuration says.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from fastapi import FastAPI

from deskbroker.api.app import create_app
from deskbroker.config import Settings
from deskbroker.services.context import BrokerContext

PR_SET_PDEATHSIG = 1
# ``serve`` sets it to its own pid before it spawns the workers.
NODE_PID_VARIABLE = "DESKBROKER_NODE_PID"


def die_with_the_node() -> None:
    """Ask the kernel for SIGTERM when the node's process dies (Linux). A worker left
    behind by a killed node would go on answering on the node's socket without the
    node's engine, heartbeat or supervision; it stops instead, and the node's service
    manager starts the node again whole."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    # The kernel signals only a death after the request: a node killed while this
    # worker was starting has already left it to init.
    node_pid = os.environ.get(NODE_PID_VARIABLE, "")
    if node_pid.isdigit() and os.getppid() != int(node_pid):
        raise SystemExit(f"the node (pid {node_pid}) is gone: this worker stops")


def app() -> FastAPI:
    """The worker's app, from the settings the environment gives (``serve`` writes its
    command-line overrides there before it spawns the workers)."""
    die_with_the_node()
    settings = Settings(engine=False)
    return create_app(BrokerContext.from_settings(settings))
