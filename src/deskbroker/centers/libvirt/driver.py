"""The libvirt center: one libvirt host (KVM/QEMU, or Xen through libvirt).

A desktop is a persistent domain whose disk is a qcow2 volume backed by a template
image of the image pool, so a build copies nothing. The broker's marks (its tag, the
center, pool and desktop, the build's task tag, the volumes it made) live in the
domain's ``<metadata>`` (``domxml``): the inventory, a resumed build and the leak sweep
read them from the domain itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import libvirt
from pydantic import BaseModel

from deskbroker.centers.base import (
    CENTER_KEY,
    DESKTOP_KEY,
    POOL_KEY,
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
from deskbroker.centers.libvirt import domxml
from deskbroker.centers.libvirt.connection import Hypervisor, code, words
from deskbroker.centers.libvirt.params import NAME, LibvirtParams, LibvirtProvisionParams
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError

# libvirt's domain states as the broker's. SHUTDOWN is "being shut down": still running.
_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.SUSPENDED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.ERROR,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.SUSPENDED,
}
_ADDRESS_SOURCES = {
    "lease": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
    "agent": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
    "arp": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
}
# The broker's own metadata keys kept on a domain. Others of the broker's (the agent's
# enrolment secret) are not written: a guest cannot read its domain's metadata, and
# anyone who can read the host's domain XML could.
_KEPT = frozenset({CENTER_KEY, POOL_KEY, DESKTOP_KEY, "deskbroker_task"})
_GIB = 1024**3
# How libvirt's storage backends say a pool is full.
_NO_SPACE = re.compile(r"not enough (free )?space|no space left|insufficient space", re.I)
log = logging.getLogger(__name__)


def _kept(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k in _KEPT or not k.startswith("deskbroker")}


class LibvirtCenter(CenterDriver):
    """One libvirt host: its domains are the center's machines."""

    kind: ClassVar[str] = "libvirt"
    Params: ClassVar[type[BaseModel]] = LibvirtParams
    ProvisionParams: ClassVar[type[BaseModel] | None] = LibvirtProvisionParams
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
        assert isinstance(self.params, LibvirtParams)
        self.lv_params: LibvirtParams = self.params
        # Not connected yet: the first call opens the connection, later ones share it.
        self.hypervisor = Hypervisor(self.lv_params, self.secrets)

    def belongs_to(self, tenant_id: str) -> None:
        super().belongs_to(tenant_id)
        self.hypervisor.owner = tenant_id

    def limits(self) -> BuildLimits:
        return BuildLimits(
            max_in_flight=self.lv_params.max_in_flight,
            build_timeout_s=self.lv_params.build_timeout_s,
        )

    # --- reading ----------------------------------------------------------------------
    def _describe(self, dom: libvirt.virDomain) -> MachineInfo:
        """One domain as a machine (runs on the helper thread)."""
        state, reason = dom.state()
        facts = domxml.domain_facts(dom.XMLDesc(0))
        power = _STATES.get(state, PowerState.UNKNOWN)
        marks = facts.marks
        ours = marks is not None and marks.broker == self.lv_params.broker_tag
        metadata = dict(marks.metadata) if marks is not None and ours else {}
        address = self._address(dom) if power is PowerState.RUNNING else ""
        fault = f"the domain crashed (reason {reason})" if power is PowerState.ERROR else ""
        attributes: dict[str, Any] = {
            "state": state,
            "memory_mib": facts.memory_kib // 1024,
            "vcpus": facts.vcpus,
            "macs": ",".join(facts.macs),
            "tags": ",".join(marks.tags) if marks is not None and ours else "",
            **{f"meta.{k}": v for k, v in metadata.items()},
        }
        if fault:
            attributes["fault"] = fault
        return MachineInfo(
            external_id=dom.UUIDString(),
            name=dom.name(),
            address=address,
            hostname=dom.name(),
            power_state=power,
            attributes=attributes,
            driver_state={"state": state, "reason": reason},
            fault=fault,
            desktop_id=metadata.get(DESKTOP_KEY, ""),
        )

    def _address(self, dom: libvirt.virDomain) -> str:
        """The domain's first IPv4 address (then any), as the address source finds it;
        empty while it has none yet (no lease, no guest agent)."""
        try:
            found = dom.interfaceAddresses(_ADDRESS_SOURCES[self.lv_params.address_source], 0)
        except libvirt.libvirtError:
            return ""
        addresses = [
            (a.get("type") != libvirt.VIR_IP_ADDR_TYPE_IPV4, str(a.get("addr") or ""))
            for iface in (found or {}).values()
            for a in iface.get("addrs") or []
            if a.get("addr")
        ]
        return min(addresses)[1] if addresses else ""

    def inventory(self) -> list[MachineInfo]:
        def listing(conn: libvirt.virConnect) -> list[MachineInfo]:
            machines = []
            for dom in conn.listAllDomains(0):
                try:
                    machines.append(self._describe(dom))
                except libvirt.libvirtError as exc:
                    if code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                        raise  # one removed while listed is simply not there
            return machines

        return self.hypervisor.call(listing, "list domains")

    def machine(self, external_id: str) -> MachineInfo | None:
        def one(conn: libvirt.virConnect) -> MachineInfo | None:
            dom = _lookup(conn, external_id)
            return self._describe(dom) if dom is not None else None

        return self.hypervisor.call(one, f"look at domain {external_id}")

    def images(self) -> list[ImageInfo]:
        """Template images: the volumes of the image pool with no backing file (a
        desktop's overlay has one)."""
        pool_name = self.lv_params.images_from

        def listing(conn: libvirt.virConnect) -> list[ImageInfo]:
            pool = _pool(conn, pool_name)
            found = []
            for volume in pool.listAllVolumes(0):
                facts = domxml.volume_facts(volume.XMLDesc(0))
                if facts.backing:
                    continue
                found.append(
                    ImageInfo(
                        external_id=volume.name(),
                        name=volume.name(),
                        attributes={
                            "format": facts.format,
                            "size_gb": round(facts.capacity_bytes / _GIB, 2),
                        },
                    )
                )
            return found

        return self.hypervisor.call(listing, f"list images of pool {pool_name}")

    def catalog(self) -> dict[str, list[dict[str, Any]]]:
        base = super().catalog()
        names = self.hypervisor.call(
            lambda conn: sorted(n.name() for n in conn.listAllNetworks(0)), "list networks"
        )
        base["networks"] = [{"id": n, "name": n} for n in names]
        return base

    # --- building ---------------------------------------------------------------------
    def create(self, request: ProvisionRequest) -> str:
        wanted = self.provision_params(request)
        assert isinstance(wanted, LibvirtProvisionParams)
        if not re.fullmatch(NAME, request.name):
            raise CenterError(
                f"{request.name!r} is not a usable libvirt domain name: letters, digits and "
                "_ . + : - only, starting with a letter or digit, at most 100 characters"
            )
        params = self.lv_params
        volume_name = f"{request.name}.qcow2"
        marks = domxml.Marks(
            broker=params.broker_tag,
            metadata=_kept(request.metadata),
            tags=tuple(request.tags),
            volumes=((params.storage_pool, volume_name),),
        )

        def build(conn: libvirt.virConnect) -> str:
            if params.max_desktops is not None:
                center = request.metadata.get(CENTER_KEY, "")
                mine = [m for m in self._marked(conn) if m.metadata.get(CENTER_KEY) == center]
                if len(mine) >= params.max_desktops:
                    raise QuotaExceeded(
                        f"the libvirt center holds {len(mine)} desktops, its max_desktops"
                    )
            image = _volume(_pool(conn, params.images_from), wanted.image)
            base = domxml.volume_facts(image.XMLDesc(0))
            if wanted.network is not None:
                try:
                    conn.networkLookupByName(wanted.network)
                except libvirt.libvirtError as exc:
                    raise UnknownName("network", wanted.network) from exc
            size = max(base.capacity_bytes, (wanted.disk_gb or 0) * _GIB)
            disks = _pool(conn, params.storage_pool)
            try:
                overlay = disks.createXML(
                    domxml.overlay_xml(volume_name, size, base.path, base.format), 0
                )
            except libvirt.libvirtError as exc:
                if _NO_SPACE.search(words(exc)):
                    # The same build may fit once desktops are deleted: the pool waits.
                    raise QuotaExceeded(
                        f"storage pool {params.storage_pool!r} has no room: {words(exc)}"
                    ) from exc
                raise
            spec = domxml.DomainSpec(
                name=request.name,
                domain_type=params.domain_type,
                memory_mib=wanted.memory_mib,
                vcpus=wanted.vcpus,
                disk_path=overlay.path(),
                disk_format="qcow2",
                disk_bus=wanted.disk_bus,
                network=wanted.network,
                graphics=wanted.graphics,
                marks=marks,
            )
            # Nothing half-made is left behind: a domain that cannot be defined or
            # started takes its disk with it.
            dom: libvirt.virDomain | None = None
            try:
                dom = conn.defineXML(domxml.domain_xml(spec))
                dom.create()
            except libvirt.libvirtError:
                if dom is not None:
                    _quietly(dom.undefine)
                _quietly(lambda: overlay.delete(0))
                raise
            return str(dom.UUIDString())

        return self.hypervisor.call(build, f"build domain {request.name}")

    def _marked(self, conn: libvirt.virConnect) -> list[domxml.Marks]:
        """The marks of every domain carrying this broker's."""
        found = []
        for dom in conn.listAllDomains(0):
            try:
                marks = domxml.domain_facts(dom.XMLDesc(0)).marks
            except libvirt.libvirtError:
                continue
            if marks is not None and marks.broker == self.lv_params.broker_tag:
                found.append(marks)
        return found

    # --- power ------------------------------------------------------------------------
    def power(self, machine: MachineInfo, action: PowerAction) -> None:
        """Ask for ``action`` without waiting for the guest: a graceful shutdown or
        reboot is a request to the guest's ACPI, which a scan sees happen."""

        def act(conn: libvirt.virConnect) -> None:
            dom = _lookup(conn, machine.external_id)
            if dom is None:
                raise CenterError(f"domain {machine.name} is gone")
            state = dom.state()[0]
            off = state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED)
            if action is PowerAction.START or action is PowerAction.RESUME:
                if off and action is PowerAction.START:
                    dom.create()
                elif state == libvirt.VIR_DOMAIN_PAUSED:
                    dom.resume()
                elif state == libvirt.VIR_DOMAIN_PMSUSPENDED:
                    dom.pMWakeup(0)
                elif off:
                    raise CenterError(f"domain {machine.name} is off: start it, not resume")
            elif action is PowerAction.STOP:
                if state == libvirt.VIR_DOMAIN_PAUSED:
                    # A paused guest hears no ACPI: let it run to shut itself down.
                    dom.resume()
                if not off:
                    dom.shutdown()
            elif action is PowerAction.SUSPEND:
                if off:
                    raise CenterError(f"domain {machine.name} is off: nothing to suspend")
                if state != libvirt.VIR_DOMAIN_PAUSED:
                    dom.suspend()
            elif action is PowerAction.REBOOT:
                dom.reboot(0)
            elif action is PowerAction.REBOOT_HARD:
                dom.reset(0)

        self.hypervisor.call(act, f"{action.value} domain {machine.name}")

    # --- destroying -------------------------------------------------------------------
    def terminate(self, machine: MachineInfo) -> None:
        """Destroy a domain the broker built, and the volumes it made for it; a domain
        already gone is no error. A domain without this broker's mark is never touched."""
        params = self.lv_params

        def remove(conn: libvirt.virConnect) -> None:
            dom = _lookup(conn, machine.external_id)
            if dom is None:
                return
            marks = domxml.domain_facts(dom.XMLDesc(0)).marks
            if marks is None or marks.broker != params.broker_tag:
                raise CenterError(
                    f"domain {machine.name} was not built by this broker: it is not deleted"
                )
            if dom.isActive():
                _unless_gone(dom.destroy)
            # Volumes first: a retry after a failure finds the domain and tries again;
            # an undefined domain would leave its disk for ever.
            for pool_name, volume_name in marks.volumes:
                try:
                    conn.storagePoolLookupByName(pool_name).storageVolLookupByName(
                        volume_name
                    ).delete(0)
                except libvirt.libvirtError as exc:
                    if code(exc) not in (
                        libvirt.VIR_ERR_NO_STORAGE_VOL,
                        libvirt.VIR_ERR_NO_STORAGE_POOL,
                    ):
                        raise
            flags = (
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            )
            try:
                dom.undefineFlags(flags | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            except libvirt.libvirtError as exc:
                if code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                if code(exc) not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                    raise
                # A hypervisor without NVRAM (Xen, the test driver) refuses the flag.
                _unless_gone(lambda: dom.undefineFlags(flags))

        self.hypervisor.call(remove, f"delete domain {machine.name}")

    def find_tagged(self, tag: str) -> list[MachineInfo]:
        def listing(conn: libvirt.virConnect) -> list[MachineInfo]:
            found = []
            for dom in conn.listAllDomains(0):
                try:
                    marks = domxml.domain_facts(dom.XMLDesc(0)).marks
                    if domxml.carried(marks, self.lv_params.broker_tag, [tag]):
                        found.append(self._describe(dom))
                except libvirt.libvirtError as exc:
                    if code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
            return found

        return self.hypervisor.call(listing, f"find domains tagged {tag}")

    def leaked(self, known_external_ids: set[str], *, center_id: str) -> list[MachineInfo]:
        ours = [
            m
            for m in self.inventory()
            if m.attributes.get(f"meta.{CENTER_KEY}") == center_id
            and m.external_id not in known_external_ids
        ]
        return ours


def _lookup(conn: libvirt.virConnect, external_id: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByUUIDString(external_id)
    except libvirt.libvirtError as exc:
        if code(exc) in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
            return None  # gone, or not a UUID at all
        raise


def _pool(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool:
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if code(exc) == libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise UnknownName("storage pool", name) from exc
        raise
    if not pool.isActive():
        raise CenterError(f"storage pool {name!r} is not active on the libvirt host")
    return pool


def _volume(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol:
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if code(exc) == libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise UnknownName("image", name) from exc
        raise


def _quietly(step: Any) -> None:
    """A clean-up step whose own failure must not hide the error being reported."""
    try:
        step()
    except libvirt.libvirtError as exc:
        log.warning("a clean-up step failed: %s", words(exc))


def _unless_gone(step: Any) -> None:
    try:
        step()
    except libvirt.libvirtError as exc:
        if code(exc) not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            raise
