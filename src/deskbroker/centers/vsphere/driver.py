"""The vSphere center: one datacenter of one vCenter.

A desktop is a VM cloned from a template: a linked clone (a child disk of the template's
current snapshot, so a build copies nothing) when the template has a snapshot, a full
clone otherwise (params ``clone``). The datastore is the one with the most free space,
or the first of the list with room (``datastore_choice``). The broker's marks (its tag,
the center, pool and desktop, the build's task tag) live in the VM's annotation
(``marks``): the inventory, a resumed build and the leak sweep read them from the VM.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel
from pyVmomi import vim, vmodl

from deskbroker.centers.base import (
    CENTER_KEY,
    DESKTOP_KEY,
    BuildLimits,
    Capability,
    CenterDriver,
    ImageInfo,
    MachineInfo,
    PowerAction,
    ProvisionRequest,
    QuotaExceeded,
    UnknownName,
)
from deskbroker.centers.vsphere import inventory, marks
from deskbroker.centers.vsphere.connection import Vcenter, wait_task, words
from deskbroker.centers.vsphere.params import NAME, VsphereParams, VsphereProvisionParams
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError

_STATES = {
    "poweredOn": PowerState.RUNNING,
    "poweredOff": PowerState.STOPPED,
    "suspended": PowerState.SUSPENDED,
}
_GIB = 1024**3
log = logging.getLogger(__name__)


class VsphereCenter(CenterDriver):
    """One vCenter datacenter: its VMs are the center's machines, its templates the images."""

    kind: ClassVar[str] = "vsphere"
    Params: ClassVar[type[BaseModel]] = VsphereParams
    ProvisionParams: ClassVar[type[BaseModel] | None] = VsphereProvisionParams
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.INVENTORY,
            Capability.IMAGES,
            Capability.PROVISION,
            Capability.POWER,
            Capability.TERMINATE,
            Capability.LEAK_SWEEP,
            Capability.PROBE,
        }
    )

    def __init__(self, params: Mapping[str, Any], secrets: Mapping[str, str]) -> None:
        super().__init__(params, secrets)
        assert isinstance(self.params, VsphereParams)
        self.vs_params: VsphereParams = self.params
        # Not connected yet: the first call logs in, later ones share the session.
        self.vcenter = Vcenter(self.vs_params, self.secrets)

    def belongs_to(self, tenant_id: str) -> None:
        super().belongs_to(tenant_id)
        self.vcenter.owner = tenant_id

    def limits(self) -> BuildLimits:
        return BuildLimits(
            max_in_flight=self.vs_params.max_in_flight,
            build_timeout_s=self.vs_params.build_timeout_s,
        )

    # --- reading ----------------------------------------------------------------------
    def _vms(self, si: vim.ServiceInstance) -> list[tuple[Any, dict[str, Any]]]:
        """Every VM and template of the datacenter with the properties the driver reads."""
        dc = inventory.datacenter(si, self.vs_params.datacenter)
        return inventory.collect(si, dc.vmFolder, vim.VirtualMachine, inventory.VM_PROPERTIES)

    def _ours(self, props: Mapping[str, Any]) -> marks.Marks | None:
        found = marks.read(props.get("config.annotation"))
        return found if found is not None and found.broker == self.vs_params.broker_tag else None

    def _describe(self, props: Mapping[str, Any]) -> MachineInfo:
        state = str(props.get("runtime.powerState") or "")
        power = _STATES.get(state, PowerState.UNKNOWN)
        mine = self._ours(props)
        metadata = dict(mine.metadata) if mine is not None else {}
        host = props.get("runtime.host")
        attributes: dict[str, Any] = {
            "state": state,
            "memory_mib": props.get("config.hardware.memoryMB") or 0,
            "vcpus": props.get("config.hardware.numCPU") or 0,
            "host": host._moId if host is not None else "",
            "datastores": ",".join(d._moId for d in props.get("datastore") or []),
            "tags": ",".join(mine.tags) if mine is not None else "",
            **{f"meta.{k}": v for k, v in metadata.items()},
        }
        return MachineInfo(
            external_id=str(props.get("config.instanceUuid") or ""),
            name=str(props.get("name") or ""),
            address=_address(props) if power is PowerState.RUNNING else "",
            hostname=str(props.get("name") or ""),
            os=str(props.get("config.guestFullName") or ""),
            power_state=power,
            attributes=attributes,
            driver_state={"state": state},
            desktop_id=metadata.get(DESKTOP_KEY, ""),
        )

    def _machines(self, si: vim.ServiceInstance) -> list[MachineInfo]:
        return [
            self._describe(props)
            for _, props in self._vms(si)
            # Templates are images, and a VM being created has no config yet.
            if not props.get("config.template") and props.get("config.instanceUuid")
        ]

    def inventory(self) -> list[MachineInfo]:
        return self.vcenter.call(self._machines, "list VMs")

    def machine(self, external_id: str) -> MachineInfo | None:
        def one(si: vim.ServiceInstance) -> MachineInfo | None:
            vm = inventory.find_vm(si, external_id)
            if vm is None:
                return None
            props = inventory.properties_of(si, vm, inventory.VM_PROPERTIES)
            if props.get("config.template") or not props.get("config.instanceUuid"):
                return None
            return self._describe(props)

        return self.vcenter.call(one, f"look at VM {external_id}")

    def images(self) -> list[ImageInfo]:
        """The datacenter's templates, by name (what a pool's ``template`` names)."""

        def listing(si: vim.ServiceInstance) -> list[ImageInfo]:
            return [
                ImageInfo(
                    external_id=str(props["name"]),
                    name=str(props["name"]),
                    os=str(props.get("config.guestFullName") or ""),
                    attributes={
                        "linked_clone": props.get("snapshot") is not None,
                        "memory_mib": props.get("config.hardware.memoryMB") or 0,
                        "vcpus": props.get("config.hardware.numCPU") or 0,
                    },
                )
                for _, props in self._vms(si)
                if props.get("config.template")
            ]

        return self.vcenter.call(listing, "list templates")

    def catalog(self) -> dict[str, list[dict[str, Any]]]:
        """The pickers' lists, with the datacenter's datastores (free space), clusters
        and hosts (for the center's ``datastores`` and ``resource_pool``)."""
        base = super().catalog()

        def listing(si: vim.ServiceInstance) -> dict[str, list[dict[str, Any]]]:
            dc = inventory.datacenter(si, self.vs_params.datacenter)
            stores = inventory.collect(
                si, dc.datastoreFolder, vim.Datastore, ["name", "summary.freeSpace"]
            )
            computes = inventory.collect(si, dc.hostFolder, vim.ComputeResource, ["name", "host"])
            return {
                "datastores": sorted(
                    (
                        {
                            "id": str(p["name"]),
                            "name": str(p["name"]),
                            "free_gb": round(int(p.get("summary.freeSpace") or 0) / _GIB, 1),
                        }
                        for _, p in stores
                    ),
                    key=lambda d: str(d["name"]),
                ),
                "clusters": sorted(
                    (
                        {
                            "id": str(p["name"]),
                            "name": str(p["name"]),
                            "hosts": len(p.get("host") or []),
                        }
                        for _, p in computes
                    ),
                    key=lambda d: str(d["name"]),
                ),
            }

        base.update(self.vcenter.call(listing, "list datastores and clusters"))
        return base

    # --- building ---------------------------------------------------------------------
    def create(self, request: ProvisionRequest) -> str:
        """Clone the pool's template into a new VM marked as the broker's, powered on.
        A clone of a large template takes time: the call's deadline is the build's."""
        wanted = self.provision_params(request)
        assert isinstance(wanted, VsphereProvisionParams)
        if not re.fullmatch(NAME, request.name):
            raise CenterError(
                f"{request.name!r} is not a usable VM name: letters, digits, space and "
                "_ . ( ) + : - only, starting with a letter or digit, at most 80 characters"
            )
        params = self.vs_params
        mark = marks.Marks(
            broker=params.broker_tag, metadata=marks.kept(request.metadata), tags=request.tags
        )
        annotation = marks.write(mark)
        deadline = time.monotonic() + params.build_timeout_s

        def build(si: vim.ServiceInstance) -> str:
            dc = inventory.datacenter(si, params.datacenter)
            dc_name = inventory.properties_of(si, dc, ["name"])["name"]
            vms = self._vms(si)
            if params.max_desktops is not None:
                center = request.metadata.get(CENTER_KEY, "")
                mine = [
                    p
                    for _, p in vms
                    if (m := self._ours(p)) is not None and m.metadata.get(CENTER_KEY) == center
                ]
                if len(mine) >= params.max_desktops:
                    raise QuotaExceeded(
                        f"the vSphere center holds {len(mine)} desktops, its max_desktops"
                    )
            found = [
                (vm, p)
                for vm, p in vms
                if p.get("config.template") and p["name"] == wanted.template
            ]
            if not found:
                raise UnknownName("template", wanted.template)
            template, facts = found[0]
            snapshot = facts.get("snapshot")
            linked = params.clone == "linked" or (params.clone == "auto" and snapshot is not None)
            if linked and snapshot is None:
                raise CenterError(
                    f"template {wanted.template!r} has no snapshot: a linked clone needs one "
                    "(take one, or set clone to full or auto)"
                )
            folder = (
                inventory.by_path(si, dc_name, "vm", params.folder)
                if params.folder
                else dc.vmFolder
            )
            relocate = vim.vm.RelocateSpec(
                pool=self._resource_pool(si, dc, dc_name),
                datastore=self._datastore(si, dc),
            )
            if linked:
                relocate.diskMoveType = "createNewChildDiskBacking"
            config = vim.vm.ConfigSpec(annotation=annotation)
            if wanted.memory_mib is not None:
                config.memoryMB = wanted.memory_mib
            if wanted.vcpus is not None:
                config.numCPUs = wanted.vcpus
            spec = vim.vm.CloneSpec(
                location=relocate,
                powerOn=False,
                template=False,
                config=config,
                snapshot=snapshot.currentSnapshot if linked and snapshot is not None else None,
            )
            task = template.CloneVM_Task(folder=folder, name=request.name, spec=spec)
            vm = wait_task(task, deadline, f"clone {wanted.template}")
            # Nothing half-made is left behind: a clone that cannot be marked or started
            # is destroyed.
            try:
                props = inventory.properties_of(
                    si, vm, ["config.annotation", "config.instanceUuid"]
                )
                if props.get("config.annotation") != annotation:
                    # Some vCenters (and the simulator) do not apply a clone's config
                    # annotation: the marks are written again before the VM runs.
                    wait_task(vm.ReconfigVM_Task(config), deadline, "mark the clone")
                wait_task(vm.PowerOnVM_Task(), deadline, "power on the clone")
            except (vmodl.MethodFault, CenterError):
                _quietly(lambda: wait_task(vm.Destroy_Task(), deadline, "remove the clone"))
                raise
            return str(props["config.instanceUuid"])

        return self.vcenter.call(
            build, f"clone VM {request.name}", timeout_s=params.build_timeout_s
        )

    def needs_address(self, request: ProvisionRequest) -> bool:
        """A clone's address is the one its guest's VMware Tools report, some time after
        it powers on: the engine takes an addressing step to wait for it."""
        return True

    def attach_address(self, external_id: str, request: ProvisionRequest) -> str:
        """Wait, up to the center's ``timeout_s``, for VMware Tools to report the new
        VM's address; empty when they have not by then (a later scan finds it)."""
        deadline = time.monotonic() + self.vs_params.timeout_s * 0.9

        def reported(si: vim.ServiceInstance) -> str:
            pause = 0.1
            while True:
                vm = inventory.find_vm(si, external_id)
                if vm is None:
                    raise CenterError(f"VM {external_id} is gone")
                address = _address(
                    inventory.properties_of(si, vm, ["guest.ipAddress", "guest.net"])
                )
                if address or time.monotonic() + pause >= deadline:
                    return address
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

        return self.vcenter.call(reported, f"wait for the address of VM {external_id}")

    def _resource_pool(self, si: vim.ServiceInstance, dc: Any, dc_name: str) -> Any:
        """The resource pool of ``params.resource_pool``, or the first cluster's root."""
        if self.vs_params.resource_pool:
            pool = inventory.by_path(si, dc_name, "host", self.vs_params.resource_pool)
            if not isinstance(pool, vim.ResourcePool):
                raise CenterError(f"{self.vs_params.resource_pool!r} is not a resource pool")
            return pool
        computes = inventory.collect(si, dc.hostFolder, vim.ComputeResource, ["resourcePool"])
        for _, props in computes:
            if props.get("resourcePool") is not None:
                return props["resourcePool"]
        raise CenterError("the datacenter has no cluster or host to run desktops on")

    def _datastore(self, si: vim.ServiceInstance, dc: Any) -> Any:
        """Where the clone's disks go: the one with most free space, or the first of the
        list with room. None with ``min_free_gb`` left is a quota: the pool waits."""
        params = self.vs_params
        found = {
            str(p["summary.name"]): (ds, p)
            for ds, p in inventory.collect(
                si,
                dc.datastoreFolder,
                vim.Datastore,
                ["summary.name", "summary.freeSpace", "summary.accessible"],
            )
        }
        names = params.datastores or sorted(found)
        for name in names:
            if name not in found:
                raise UnknownName("datastore", name)
        room = [
            (name, int(found[name][1].get("summary.freeSpace") or 0))
            for name in names
            if found[name][1].get("summary.accessible")
            and int(found[name][1].get("summary.freeSpace") or 0) >= params.min_free_gb * _GIB
        ]
        if not room:
            raise QuotaExceeded(
                f"no datastore of {', '.join(names)} has {params.min_free_gb:g} GB free"
            )
        if params.datastore_choice == "most_free":
            name = max(room, key=lambda r: r[1])[0]
        else:
            name = room[0][0]
        return found[name][0]

    # --- power ------------------------------------------------------------------------
    def power(self, machine: MachineInfo, action: PowerAction) -> None:
        """Ask for ``action``. A graceful shutdown or reboot asks the guest through VMware
        Tools without waiting for it; with no Tools running it is a power off or a reset."""
        deadline = time.monotonic() + self.vs_params.timeout_s

        def act(si: vim.ServiceInstance) -> None:
            vm = inventory.find_vm(si, machine.external_id)
            if vm is None:
                raise CenterError(f"VM {machine.name} is gone")
            state = str(
                inventory.properties_of(si, vm, ["runtime.powerState"]).get("runtime.powerState")
            )

            def run(task: Any) -> None:
                wait_task(task, deadline, f"{action.value} {machine.name}")

            if action is PowerAction.START or action is PowerAction.RESUME:
                if state == "poweredOff" and action is PowerAction.RESUME:
                    raise CenterError(f"VM {machine.name} is off: start it, not resume")
                if state != "poweredOn":
                    run(vm.PowerOnVM_Task())  # a suspended VM resumes
            elif action is PowerAction.STOP:
                if state == "suspended":
                    run(vm.PowerOffVM_Task())  # a suspended guest hears nothing
                elif state == "poweredOn":
                    try:
                        vm.ShutdownGuest()
                    except (vim.fault.ToolsUnavailable, vim.fault.InvalidState):
                        run(vm.PowerOffVM_Task())
            elif action is PowerAction.SUSPEND:
                if state == "poweredOff":
                    raise CenterError(f"VM {machine.name} is off: nothing to suspend")
                if state == "poweredOn":
                    run(vm.SuspendVM_Task())
            elif action is PowerAction.REBOOT:
                try:
                    vm.RebootGuest()
                except (vim.fault.ToolsUnavailable, vim.fault.InvalidState):
                    run(vm.ResetVM_Task())
            elif action is PowerAction.REBOOT_HARD:
                run(vm.ResetVM_Task())

        self.vcenter.call(act, f"{action.value} VM {machine.name}")

    def revert_to_snapshot(self, machine: MachineInfo) -> None:
        """Put a VM back to its current snapshot (a non-persistent desktop's refresh).
        Only a VM the broker built is reverted."""
        deadline = time.monotonic() + self.vs_params.timeout_s

        def revert(si: vim.ServiceInstance) -> None:
            vm = self._mine(si, machine)
            if vm is None:
                raise CenterError(f"VM {machine.name} is gone")
            if inventory.properties_of(si, vm, ["snapshot"]).get("snapshot") is None:
                raise CenterError(f"VM {machine.name} has no snapshot to revert to")
            wait_task(vm.RevertToCurrentSnapshot_Task(), deadline, f"revert {machine.name}")

        self.vcenter.call(revert, f"revert VM {machine.name}")

    # --- destroying -------------------------------------------------------------------
    def _mine(self, si: vim.ServiceInstance, machine: MachineInfo) -> Any | None:
        """The VM if it is there; a VM without this broker's mark is refused."""
        vm = inventory.find_vm(si, machine.external_id)
        if vm is None:
            return None
        props = inventory.properties_of(si, vm, ["config.annotation", "config.template"])
        if props.get("config.template") or self._ours(props) is None:
            raise CenterError(f"VM {machine.name} was not built by this broker: it is not touched")
        return vm

    def terminate(self, machine: MachineInfo) -> None:
        """Power off and destroy a VM the broker built (its disks go with it; a linked
        clone's parent template stays). A VM already gone is no error."""
        deadline = time.monotonic() + self.vs_params.timeout_s

        def remove(si: vim.ServiceInstance) -> None:
            vm = self._mine(si, machine)
            if vm is None:
                return
            state = inventory.properties_of(si, vm, ["runtime.powerState"]).get(
                "runtime.powerState"
            )
            if state != "poweredOff":
                # It may have gone off meanwhile.
                with contextlib.suppress(vim.fault.InvalidPowerState):
                    wait_task(vm.PowerOffVM_Task(), deadline, f"power off {machine.name}")
            try:
                wait_task(vm.Destroy_Task(), deadline, f"destroy {machine.name}")
            except vmodl.fault.ManagedObjectNotFound:
                return

        self.vcenter.call(remove, f"delete VM {machine.name}")

    def find_tagged(self, tag: str) -> list[MachineInfo]:
        def listing(si: vim.ServiceInstance) -> list[MachineInfo]:
            return [
                self._describe(p)
                for _, p in self._vms(si)
                if (m := self._ours(p)) is not None
                and tag in m.tags
                and not p.get("config.template")
                and p.get("config.instanceUuid")
            ]

        return self.vcenter.call(listing, f"find VMs tagged {tag}")

    def leaked(self, known_external_ids: set[str], *, center_id: str) -> list[MachineInfo]:
        return [
            m
            for m in self.inventory()
            if m.attributes.get(f"meta.{CENTER_KEY}") == center_id
            and m.external_id not in known_external_ids
        ]


def _address(props: Mapping[str, Any]) -> str:
    """The guest's address as VMware Tools report it: its primary one, else the first
    IPv4 of its NICs, else any; empty while Tools report none."""
    primary = props.get("guest.ipAddress")
    if primary:
        return str(primary)
    found = [
        (":" in str(a), str(a)) for nic in props.get("guest.net") or [] for a in nic.ipAddress or []
    ]
    return min(found)[1] if found else ""


def _quietly(step: Any) -> None:
    """A clean-up step whose own failure must not hide the error being reported."""
    try:
        step()
    except (vmodl.MethodFault, CenterError) as exc:
        log.warning("a clean-up step failed: %s", words(exc))
