"""Rebuild: a server given a fresh root disk from an image, keeping its id, name,
addresses and attached volumes (POST /servers/{id}/action {"rebuild": {...}}).

As in Nova: accepted from ACTIVE, SHUTOFF and ERROR with no task under way; the status
is REBUILD (task_state ``rebuilding``) until the build delay passed; the server's image
becomes the new one at once; a server that was shut off stays shut off, any other comes
back ACTIVE (an ERROR one is repaired); a volume-backed server cannot change image
(before microversion 2.93, which cloudsim does not offer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cloudsim.config import Timings
from cloudsim.state import SHUTDOWN, CloudState, Server
from cloudsim.web import ApiError

#: vm_states from which Nova rebuilds (nova.compute.api.rebuild's check_instance_state).
REBUILDABLE = {"active", "stopped", "error"}


def _ref_id(value: Any) -> str:
    return str(value).rstrip("/").rsplit("/", 1)[-1]


class Rebuilding:
    """Mixed into the lifecycle, whose state checks and scheduling it uses."""

    timings: Timings
    state: CloudState

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

    def rebuild(self, server: Server, arg: Any) -> None:
        """rebuild {"imageRef": ..., "name"?, "metadata"?}: checked like Nova, then
        REBUILD for the build delay."""
        if not isinstance(arg, dict):
            raise ApiError(400, "Invalid input for field/attribute rebuild.")
        image_ref = arg.get("imageRef")
        if not isinstance(image_ref, str) or not image_ref:
            raise ApiError(
                400, "Invalid input for field/attribute rebuild. 'imageRef' is a required property"
            )
        image_id = _ref_id(image_ref)
        image = self.state.images.get(image_id)
        if image is None:
            raise ApiError(400, f"Image {image_ref} could not be found.")
        self._check(server, "rebuild", REBUILDABLE, {None})
        if not server.image_id and image_id:
            raise ApiError(
                400,
                f"Image {image_id} is unacceptable: Unable to rebuild with a different "
                "image for a volume-backed server.",
            )
        disk = server.flavor.disk
        if server.image_id and disk and image.min_disk > disk:
            raise ApiError(
                400,
                "Flavor's disk is too small for requested image. Flavor disk is "
                f"{disk * 2**30} bytes, image is {image.min_disk * 2**30} bytes.",
            )
        if "name" in arg:
            name = arg["name"]
            if not isinstance(name, str) or not name.strip() or len(name) > 255:
                raise ApiError(400, "Invalid input for field/attribute name.")
            server.name = name
        if "metadata" in arg:
            metadata = arg["metadata"]
            if not isinstance(metadata, dict):
                raise ApiError(400, "Invalid input for field/attribute metadata.")
            server.metadata = {str(k): str(v) for k, v in metadata.items()}
        was_stopped = server.vm_state == "stopped"
        server.image_id = image_id
        server.fault = None
        self._down(server)
        finish = self._stay_stopped if was_stopped else self._become_active
        self._begin(server, "rebuilding", self.timings.build, finish)

    def _stay_stopped(self, server: Server, at: float) -> None:
        self._set(server, "stopped", None, SHUTDOWN)
