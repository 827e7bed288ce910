"""The server state machine: builds, power actions and deletes moving on simulated time."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cloudsim.clock import Scheduler
from cloudsim.config import Timings
from cloudsim.rebuild import Rebuilding
from cloudsim.shelving import SHELVED_STATUS, Shelving
from cloudsim.state import (
    NOSTATE,
    RUNNING,
    SHUTDOWN,
    SUSPENDED,
    Attachment,
    CloudState,
    Flavor,
    Network,
    Port,
    Server,
    Volume,
)
from cloudsim.web import ApiError

#: Nova's status map (nova.api.openstack.common._STATE_MAP), reduced to the simulated states.
_STATUS: dict[str, dict[str | None, str]] = {
    "building": {None: "BUILD"},
    "active": {
        None: "ACTIVE",
        "rebooting": "REBOOT",
        "reboot_pending": "REBOOT",
        "reboot_started": "REBOOT",
        "rebooting_hard": "HARD_REBOOT",
        "reboot_pending_hard": "HARD_REBOOT",
        "reboot_started_hard": "HARD_REBOOT",
        "rebuilding": "REBUILD",
    },
    "stopped": {None: "SHUTOFF", "rebuilding": "REBUILD"},
    "suspended": {None: "SUSPENDED"},
    "error": {None: "ERROR", "rebuilding": "REBUILD"},
    "deleted": {None: "DELETED"},
    **SHELVED_STATUS,
}

#: Task states from which Nova accepts a hard reboot (task_states.ALLOW_REBOOT).
_ALLOW_HARD_REBOOT_TASKS = {
    None,
    "rebooting",
    "reboot_pending",
    "reboot_started",
    "resuming",
    "rebooting_hard",
    "suspending",
}

#: vm_state values in which a volume may be attached or detached.
ATTACHABLE_VM_STATES = {"active", "stopped", "suspended"}


def status_of(server: Server) -> str:
    """The API ``status`` derived from vm_state and task_state, as Nova computes it."""
    table = _STATUS.get(server.vm_state, {None: "UNKNOWN"})
    return table.get(server.task_state, table[None])


def hostname_for(name: str) -> str:
    """Sanitize a display name into a hostname the way Nova does."""
    host = re.sub(r"[^\w.-]+", "-", name.lower().replace("_", "-"))
    host = re.sub(r"-{2,}", "-", host).strip(".-")
    return host[:63] or "server"


class Backing(Protocol):
    """Something real behind instances, e.g. a desktop per ACTIVE server."""

    def server_up(self, server_id: str, address: str, name: str) -> None:
        """The server became ACTIVE (or was rebooted) on ``address``."""

    def server_down(self, server_id: str) -> None:
        """The server stopped running (shut off, suspended, deleted, failed)."""


@dataclass(slots=True)
class NetworkRequest:
    """One NIC of a server being built."""

    network: Network
    fixed_ip: str | None = None


@dataclass(slots=True)
class VolumeRequest:
    """One volume attached at build time (root when device is /dev/vda)."""

    volume: Volume
    device: str
    delete_on_termination: bool = False
    tag: str | None = None


@dataclass(slots=True)
class ServerSpec:
    """Everything needed to build a server, already validated by the API layer."""

    project_id: str
    user_id: str
    name: str
    flavor: Flavor
    image_id: str
    availability_zone: str
    networks: list[NetworkRequest] = field(default_factory=list)
    volumes: list[VolumeRequest] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    user_data: str | None = None
    key_name: str | None = None
    security_groups: list[str] = field(default_factory=lambda: ["default"])
    description: str | None = None
    hostname: str | None = None
    reservation_id: str = ""
    config_drive: str = ""


class Lifecycle(Shelving, Rebuilding):
    """Creates servers and moves them through Nova's vm/task/power states on the clock."""

    def __init__(
        self,
        state: CloudState,
        scheduler: Scheduler,
        timings: Timings,
        backing: Backing | None = None,
    ) -> None:
        self.state = state
        self.scheduler = scheduler
        self.timings = timings
        self.backing = backing

    # -- helpers ------------------------------------------------------------------------
    def _at(self, server: Server, due: float, step: Callable[[Server, float], None]) -> None:
        """Schedule a step that is skipped if the server moved on (gen changed) meanwhile."""
        gen = server.gen

        def fire(at: float) -> None:
            if server.gen == gen and not server.deleted:
                step(server, at)

        self.scheduler.call_at(due, fire)

    def _set(
        self,
        server: Server,
        vm_state: str | None = None,
        task_state: str | None = "",
        power_state: int | None = None,
    ) -> None:
        if vm_state is not None:
            server.vm_state = vm_state
        if task_state != "":
            server.task_state = task_state
        if power_state is not None:
            server.power_state = power_state
        server.touch()

    def _ports_status(self, server: Server, status: str) -> None:
        now = time.time()
        for port in self.state.ports_by_device.get(server.id, ()):
            if port.status != status:
                port.status = status
                port.updated = now

    def address_of(self, server: Server) -> str | None:
        """The first fixed IP of a server (where its desktop listens)."""
        ports = self.state.ports_by_device.get(server.id)
        return ports[0].ip if ports else None

    def _up(self, server: Server) -> None:
        self._ports_status(server, "ACTIVE")
        address = self.address_of(server)
        if self.backing is not None and address is not None and server.backed:
            self.backing.server_up(server.id, address, server.name)

    def _down(self, server: Server) -> None:
        self._ports_status(server, "DOWN")
        if self.backing is not None:
            self.backing.server_down(server.id)

    # -- create -------------------------------------------------------------------------
    def create(
        self,
        spec: ServerSpec,
        *,
        fault_mode: str | None = None,
        ready: str | None = None,
        backed: bool = True,
    ) -> Server:
        """Build a server; ``ready`` ("ACTIVE", "SHUTOFF", ...) skips the build phases.

        ``backed=False`` keeps a real desktop from being started for it (bulk seeding).
        """
        state = self.state
        now = time.time()
        state.server_seq += 1
        server = Server(
            id=str(uuid.uuid4()),
            seq=state.server_seq,
            name=spec.name,
            project_id=spec.project_id,
            user_id=spec.user_id,
            flavor=spec.flavor,
            image_id=spec.image_id,
            availability_zone=spec.availability_zone,
            created=now,
            updated=now,
            hostname=spec.hostname or hostname_for(spec.name),
            metadata=dict(spec.metadata),
            tags=list(spec.tags),
            description=spec.description,
            user_data=spec.user_data,
            key_name=spec.key_name,
            security_groups=list(spec.security_groups),
            fault_mode=fault_mode,
            reservation_id=spec.reservation_id or f"r-{uuid.uuid4().hex[:8]}",
            config_drive=spec.config_drive,
            backed=backed,
        )
        allocated: list[Port] = []
        try:
            for nic in spec.networks:
                allocated.append(self._make_port(server, nic))
        except LookupError as exc:
            for port in allocated:
                state.remove_port(port)
            raise ApiError(409, f"No more IP addresses available on network {exc}.") from exc
        for port in allocated:
            state.add_port(port)
        server.port_ids = [p.id for p in allocated]
        for vol in spec.volumes:
            self._attach_now(server, vol.volume, vol.device, vol.delete_on_termination, vol.tag)
        state.add_server(server)
        usage = state.usage_of(server.project_id)
        usage["instances"] += 1
        usage["cores"] += spec.flavor.vcpus
        usage["ram"] += spec.flavor.ram
        if ready is not None:
            server.networked = True
            server.launched_at = now
            self.force(server, ready)
        else:
            self._schedule_build(server)
        return server

    def _make_port(self, server: Server, nic: NetworkRequest) -> Port:
        subnet = self.state.subnets[nic.network.subnet_ids[0]]
        address = subnet.pool.allocate(nic.fixed_ip)
        now = time.time()
        seq = server.seq
        mac = f"fa:16:3e:{(seq >> 16) & 0xFF:02x}:{(seq >> 8) & 0xFF:02x}:{seq & 0xFF:02x}"
        groups = [
            g.id
            for g in self.state.security_groups.values()
            if g.project_id == server.project_id and g.name in server.security_groups
        ]
        return Port(
            id=str(uuid.uuid4()),
            network_id=nic.network.id,
            subnet_id=subnet.id,
            project_id=server.project_id,
            mac=mac,
            ip=address,
            device_id=server.id,
            device_owner=f"compute:{server.availability_zone}",
            status="DOWN",
            security_group_ids=groups,
            created=now,
            updated=now,
        )

    def _attach_now(
        self, server: Server, volume: Volume, device: str, dot: bool, tag: str | None
    ) -> Attachment:
        attachment = Attachment(
            id=str(uuid.uuid4()),
            volume_id=volume.id,
            server_id=server.id,
            device=device,
            attached_at=time.time(),
            delete_on_termination=dot,
            tag=tag,
        )
        server.attachments.append(attachment)
        volume.attachment = attachment
        volume.status = "in-use"
        volume.gen += 1
        volume.updated = time.time()
        return attachment

    def _schedule_build(self, server: Server) -> None:
        start = self.scheduler.clock.now()
        total = self.timings.build
        self._at(server, start + 0.2 * total, self._build_networking)
        spawn_at = 0.4
        if server.attachments:
            self._at(
                server,
                start + 0.4 * total,
                lambda s, _at: self._set(s, task_state="block_device_mapping"),
            )
            spawn_at = 0.5
        self._at(
            server, start + spawn_at * total, lambda s, _at: self._set(s, task_state="spawning")
        )
        if server.fault_mode != "build_stuck":
            self._at(server, start + total, self._build_done)

    def _build_networking(self, server: Server, at: float) -> None:
        if server.fault_mode == "build_error":
            for port in list(self.state.ports_by_device.get(server.id, ())):
                self.state.remove_port(port)
            self._fail(
                server,
                "No valid host was found. There are not enough hosts available.",
                power=NOSTATE,
            )
            return
        server.networked = True
        self._set(server, task_state="networking")

    def _build_done(self, server: Server, at: float) -> None:
        server.launched_at = time.time()
        self._set(server, "active", None, RUNNING)
        self._up(server)
        if server.fault_mode == "error_after_build":
            self._at(
                server,
                at + self.timings.error_after_build,
                lambda s, _at: self._fail(
                    s, "Instance crashed: simulated hypervisor failure after build.", power=SHUTDOWN
                ),
            )

    def _fail(self, server: Server, message: str, *, power: int) -> None:
        server.gen += 1  # cancels the rest of a build or action
        server.fault = {
            "code": 500,
            "created": time.time(),
            "message": message,
            "details": "Simulated by cloudsim.",
        }
        self._set(server, "error", None, power)
        self._down(server)

    # -- actions ------------------------------------------------------------------------
    def _check(
        self, server: Server, method: str, vm_states: set[str], task_states: set[str | None]
    ) -> None:
        if server.locked:
            raise ApiError(409, f"Instance {server.id} is locked")
        if server.vm_state not in vm_states:
            raise ApiError(
                409,
                f"Cannot '{method}' instance {server.id} while it is in vm_state {server.vm_state}",
            )
        if server.task_state not in task_states:
            raise ApiError(
                409,
                f"Cannot '{method}' instance {server.id} while it is in "
                f"task_state {server.task_state}",
            )

    def _begin(
        self, server: Server, task: str, duration: float, finish: Callable[[Server, float], None]
    ) -> None:
        server.gen += 1
        self._set(server, task_state=task)
        self._at(server, self.scheduler.clock.now() + duration, finish)

    def start(self, server: Server) -> None:
        """os-start: SHUTOFF → ACTIVE."""
        self._check(server, "start", {"stopped"}, {None})
        self._begin(server, "powering-on", self.timings.start, self._become_active)

    def stop(self, server: Server) -> None:
        """os-stop: ACTIVE or ERROR → SHUTOFF; the desktop goes away at once."""
        self._check(server, "stop", {"active", "error"}, {None})
        self._down(server)
        self._begin(
            server,
            "powering-off",
            self.timings.stop,
            lambda s, _at: self._set(s, "stopped", None, SHUTDOWN),
        )

    def suspend(self, server: Server) -> None:
        """suspend: ACTIVE → SUSPENDED."""
        self._check(server, "suspend", {"active"}, {None})
        self._down(server)
        self._begin(
            server,
            "suspending",
            self.timings.suspend,
            lambda s, _at: self._set(s, "suspended", None, SUSPENDED),
        )

    def resume(self, server: Server) -> None:
        """resume: SUSPENDED → ACTIVE."""
        self._check(server, "resume", {"suspended"}, {None})
        self._begin(server, "resuming", self.timings.resume, self._become_active)

    def reboot(self, server: Server, kind: str) -> None:
        """reboot SOFT (ACTIVE, idle) or HARD (also from SHUTOFF/SUSPENDED/ERROR)."""
        if kind not in ("SOFT", "HARD"):
            raise ApiError(
                400,
                "Invalid input for field/attribute type. Value: "
                f"{kind}. '{kind}' is not one of ['HARD', 'Hard', 'hard', "
                "'SOFT', 'Soft', 'soft']",
            )
        if kind == "SOFT":
            self._check(server, "reboot", {"active"}, {None})
            task = "rebooting"
        else:
            self._check(
                server,
                "reboot",
                {"active", "stopped", "suspended", "error"},
                _ALLOW_HARD_REBOOT_TASKS,
            )
            task = "rebooting_hard"
            # A hard reboot repairs an ERROR server, as in Nova.
            if server.vm_state == "error":
                server.vm_state = "active"
                server.fault = None
        self._down(server)
        self._begin(server, task, self.timings.reboot, self._become_active)

    def _become_active(self, server: Server, at: float) -> None:
        self._set(server, "active", None, RUNNING)
        self._up(server)

    def delete(self, server: Server) -> None:
        """DELETE: task_state deleting now; gone (status DELETED, 404) after the delay."""
        if server.locked:
            raise ApiError(409, f"Instance {server.id} is locked")
        if server.task_state == "deleting":
            return
        self._down(server)
        self._begin(server, "deleting", self.timings.delete, self._finish_delete)

    def _finish_delete(self, server: Server, at: float) -> None:
        state = self.state
        for port in list(state.ports_by_device.get(server.id, ())):
            state.remove_port(port)
        now = time.time()
        for attachment in server.attachments:
            volume = state.volumes.get(attachment.volume_id)
            if volume is None:
                continue
            if attachment.delete_on_termination:
                del state.volumes[volume.id]
            else:
                volume.attachment = None
                volume.status = "available"
                volume.updated = now
                volume.gen += 1
        server.attachments = []
        usage = state.usage_of(server.project_id)
        usage["instances"] -= 1
        usage["cores"] -= server.flavor.vcpus
        usage["ram"] -= server.flavor.ram
        server.deleted = True
        server.terminated_at = now
        server.gen += 1
        self._set(server, "deleted", None, NOSTATE)

    # -- forced changes (control API) -----------------------------------------------------
    def force(self, server: Server, status: str, message: str | None = None) -> None:
        """Put a server straight into a status, e.g. a guest that shut itself down."""
        status = status.upper()
        server.gen += 1
        if status == "ACTIVE":
            server.fault = None
            server.networked = True
            server.launched_at = server.launched_at or time.time()
            self._set(server, "active", None, RUNNING)
            self._up(server)
        elif status == "SHUTOFF":
            self._set(server, "stopped", None, SHUTDOWN)
            self._down(server)
        elif status == "SUSPENDED":
            self._set(server, "suspended", None, SUSPENDED)
            self._down(server)
        elif status == "ERROR":
            self._fail(server, message or "Simulated failure.", power=SHUTDOWN)
        elif status == "DELETED":
            self._down(server)
            self._finish_delete(server, 0.0)
        elif status in ("SHELVED", "SHELVED_OFFLOADED"):
            self.force_shelved(server, offloaded=status == "SHELVED_OFFLOADED")
        else:
            raise ApiError(
                400,
                f"cannot force status {status!r}; use ACTIVE, SHUTOFF, SUSPENDED, ERROR, "
                "SHELVED, SHELVED_OFFLOADED or DELETED",
            )

    def lock(self, server: Server, reason: str | None) -> None:
        """lock: further actions by the owner answer 409."""
        server.locked = True
        server.locked_reason = reason
        server.touch()

    def unlock(self, server: Server) -> None:
        """unlock."""
        server.locked = False
        server.locked_reason = None
        server.touch()

    # -- volumes ------------------------------------------------------------------------
    def attach(
        self, server: Server, volume: Volume, device: str, dot: bool, tag: str | None
    ) -> Attachment:
        """Attach a volume: attaching now, in-use after the volume delay."""
        attachment = self._attach_now(server, volume, device, dot, tag)
        volume.status = "attaching"
        server.touch()
        self._volume_later(volume, "in-use")
        return attachment

    def detach(self, server: Server, attachment: Attachment) -> None:
        """Detach a volume: detaching now, available after the volume delay."""
        volume = self.state.volumes.get(attachment.volume_id)
        server.attachments.remove(attachment)
        server.touch()
        if volume is None:
            return
        volume.status = "detaching"
        volume.gen += 1
        volume.updated = time.time()

        def done(vol: Volume) -> None:
            vol.attachment = None

        self._volume_later(volume, "available", done)

    def _volume_later(
        self, volume: Volume, status: str, also: Callable[[Volume], None] | None = None
    ) -> None:
        gen = volume.gen

        def fire(_at: float) -> None:
            if volume.gen == gen and volume.id in self.state.volumes:
                if also is not None:
                    also(volume)
                volume.status = status
                volume.updated = time.time()

        self.scheduler.call_at(self.scheduler.clock.now() + self.timings.volume, fire)

    def volume_later(self, volume: Volume, status: str) -> None:
        """Move a volume to ``status`` after the volume delay (create, delete)."""
        volume.gen += 1
        if status == "deleted":
            gen = volume.gen

            def gone(_at: float) -> None:
                if volume.gen == gen:
                    self.state.volumes.pop(volume.id, None)

            self.scheduler.call_at(self.scheduler.clock.now() + self.timings.volume, gone)
        else:
            self._volume_later(volume, status)
