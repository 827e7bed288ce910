"""Shelving: a server put away (SHELVED, then SHELVED_OFFLOADED) and brought back.

Nova frees a shelved server's host; it comes back with ``unshelve``, never ``os-start``
(which answers 409 for a shelved server), so a client that only knows start/stop is caught.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cloudsim.config import Timings
from cloudsim.state import NOSTATE, SHUTDOWN, Server

#: vm_states from which Nova shelves a server (nova.compute.api.shelve).
SHELVABLE = {"active", "stopped", "paused", "suspended"}
SHELVED_STATES = {"shelved", "shelved_offloaded"}
#: Nova's status for them.
SHELVED_STATUS: dict[str, dict[str | None, str]] = {
    "shelved": {None: "SHELVED"},
    "shelved_offloaded": {None: "SHELVED_OFFLOADED"},
}


class Shelving:
    """Mixed into the lifecycle, whose state checks and scheduling it uses."""

    timings: Timings

    if TYPE_CHECKING:

        def _check(
            self, server: Server, method: str, vm_states: set[str], task_states: set[str | None]
        ) -> None: ...
        def _begin(
            self,
            server: Server,
            task: str,
            duration: float,
            finish: Callable[[Server, float], None],
        ) -> None: ...
        def _set(
            self,
            server: Server,
            vm_state: str | None = None,
            task_state: str | None = "",
            power_state: int | None = None,
        ) -> None: ...
        def _down(self, server: Server) -> None: ...
        def _become_active(self, server: Server, at: float) -> None: ...

    def shelve(self, server: Server) -> None:
        """shelve: SHELVED after the stop delay, then offloaded at once (Nova's default
        ``shelved_offload_time`` of 0)."""
        self._check(server, "shelve", SHELVABLE, {None})
        self._down(server)
        self._begin(server, "shelving", self.timings.stop, self._offload)

    def _offload(self, server: Server, at: float) -> None:
        self._set(server, "shelved_offloaded", None, NOSTATE)

    def shelve_offload(self, server: Server) -> None:
        """shelveOffload: SHELVED → SHELVED_OFFLOADED."""
        self._check(server, "shelveOffload", {"shelved"}, {None})
        self._begin(server, "shelving_offloading", 0.0, self._offload)

    def unshelve(self, server: Server) -> None:
        """unshelve: SHELVED or SHELVED_OFFLOADED → ACTIVE after the start delay."""
        self._check(server, "unshelve", SHELVED_STATES, {None})
        self._begin(server, "unshelving", self.timings.start, self._become_active)

    def force_shelved(self, server: Server, offloaded: bool) -> None:
        """Put a server straight into SHELVED or SHELVED_OFFLOADED (control API)."""
        self._down(server)
        if offloaded:
            self._set(server, "shelved_offloaded", None, NOSTATE)
        else:
            self._set(server, "shelved", None, SHUTDOWN)
