"""The XML a libvirt center writes (domains, volumes) and reads (domains), no I/O.

Everything is built with ``xml.etree``: names, tags and metadata come from pools and
administrators, and an element tree escapes them; no XML is ever formatted as a string.
The broker's marks on a domain (its tag, center, pool, desktop, task tags and the
volumes it created) live in the domain's ``<metadata>`` under the broker's own
namespace, which libvirt keeps and hands back untouched.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: The namespace of the broker's element in a domain's ``<metadata>``.
NS = "https://deskbroker.dev/xmlns/libvirt/1"
PREFIX = "deskbroker"
ET.register_namespace(PREFIX, NS)
_Q = f"{{{NS}}}"


def _text(parent: ET.Element, tag: str, text: str, **attrib: str) -> ET.Element:
    child = ET.SubElement(parent, tag, attrib)
    child.text = text
    return child


@dataclass(frozen=True)
class Marks:
    """What the broker writes into a domain it builds, and reads back from any domain."""

    broker: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    # (pool, volume name) of each volume the broker created for the domain: destroyed
    # with it. A template image is never among them.
    volumes: tuple[tuple[str, str], ...] = ()

    def element(self) -> ET.Element:
        root = ET.Element(f"{_Q}instance")
        _text(root, f"{_Q}broker", self.broker)
        for key, value in sorted(self.metadata.items()):
            _text(root, f"{_Q}meta", value, key=key)
        for tag in self.tags:
            _text(root, f"{_Q}tag", tag)
        for pool, name in self.volumes:
            _text(root, f"{_Q}volume", name, pool=pool)
        return root

    @classmethod
    def of(cls, domain: ET.Element) -> Marks | None:
        """The broker's marks on a parsed domain; ``None`` when it carries none."""
        found = domain.find(f"metadata/{_Q}instance")
        if found is None:
            return None
        return cls(
            broker=(found.findtext(f"{_Q}broker") or "").strip(),
            metadata={
                str(m.get("key")): m.text or "" for m in found.iterfind(f"{_Q}meta") if m.get("key")
            },
            tags=tuple(t.text or "" for t in found.iterfind(f"{_Q}tag") if t.text),
            volumes=tuple(
                (str(v.get("pool") or ""), v.text or "")
                for v in found.iterfind(f"{_Q}volume")
                if v.get("pool") and v.text
            ),
        )


@dataclass(frozen=True)
class DomainSpec:
    """A new desktop's domain: its size, disk and network as the pool asked."""

    name: str
    domain_type: str
    memory_mib: int
    vcpus: int
    disk_path: str
    disk_format: str
    disk_bus: str
    network: str | None
    graphics: str
    marks: Marks


def _target_dev(bus: str) -> str:
    return {"virtio": "vda", "xen": "xvda", "ide": "hda"}.get(bus, "sda")


def domain_xml(spec: DomainSpec) -> str:
    """The ``<domain>`` document of a new desktop."""
    root = ET.Element("domain", {"type": spec.domain_type})
    _text(root, "name", spec.name)
    _text(root, "memory", str(spec.memory_mib), unit="MiB")
    _text(root, "vcpu", str(spec.vcpus))
    metadata = ET.SubElement(root, "metadata")
    metadata.append(spec.marks.element())
    os_ = ET.SubElement(root, "os")
    _text(os_, "type", "hvm")
    ET.SubElement(os_, "boot", {"dev": "hd"})
    # ACPI: without it a guest never hears a graceful shutdown.
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    devices = ET.SubElement(root, "devices")
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": spec.disk_format})
    ET.SubElement(disk, "source", {"file": spec.disk_path})
    ET.SubElement(disk, "target", {"dev": _target_dev(spec.disk_bus), "bus": spec.disk_bus})
    if spec.network:
        interface = ET.SubElement(devices, "interface", {"type": "network"})
        ET.SubElement(interface, "source", {"network": spec.network})
        if spec.domain_type != "xen":
            ET.SubElement(interface, "model", {"type": "virtio"})
    if spec.graphics != "none":
        # Only on the host's loopback: a console for operators, never the desktop's door.
        ET.SubElement(
            devices, "graphics", {"type": spec.graphics, "autoport": "yes", "listen": "127.0.0.1"}
        )
    return ET.tostring(root, encoding="unicode")


def overlay_xml(name: str, capacity_bytes: int, backing_path: str, backing_format: str) -> str:
    """A qcow2 volume whose backing file is the template image: the desktop's disk."""
    root = ET.Element("volume")
    _text(root, "name", name)
    _text(root, "capacity", str(capacity_bytes), unit="bytes")
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", {"type": "qcow2"})
    backing = ET.SubElement(root, "backingStore")
    _text(backing, "path", backing_path)
    ET.SubElement(backing, "format", {"type": backing_format})
    return ET.tostring(root, encoding="unicode")


def _parse(xml: str) -> ET.Element:
    """A document libvirt returned. libvirt writes no DTD; one there (a hostile host)
    could declare entities, so it is refused before expat sees it."""
    if "<!" in xml.replace("<!--", ""):
        raise ValueError("libvirt returned XML with a declaration; it is not read")
    return ET.fromstring(xml)  # noqa: S314 - no DTD, checked above


@dataclass(frozen=True)
class VolumeFacts:
    path: str
    format: str
    capacity_bytes: int
    backing: str


def volume_facts(xml: str) -> VolumeFacts:
    """Path, format, capacity and backing file of a volume's XML."""
    root = _parse(xml)
    capacity = root.find("capacity")
    factor = {"bytes": 1, "b": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
    unit = capacity.get("unit", "bytes") if capacity is not None else "bytes"
    size = int((capacity.text or "0").strip()) * factor.get(unit, 1) if capacity is not None else 0
    fmt = root.find("target/format")
    return VolumeFacts(
        path=(root.findtext("target/path") or "").strip(),
        format=(fmt.get("type", "raw") if fmt is not None else "raw"),
        capacity_bytes=size,
        backing=(root.findtext("backingStore/path") or "").strip(),
    )


@dataclass(frozen=True)
class DomainFacts:
    """What the driver reads from a domain's XML."""

    memory_kib: int
    vcpus: int
    macs: tuple[str, ...]
    disks: tuple[str, ...]
    marks: Marks | None


_UNITS = {"b": 1, "bytes": 1, "KiB": 1024, "k": 1024, "MiB": 1024**2, "M": 1024**2}
_UNITS |= {"GiB": 1024**3, "G": 1024**3}


def _kib(element: ET.Element | None) -> int:
    """A libvirt memory size in KiB (libvirt answers in KiB; a unit may say otherwise)."""
    if element is None or not (element.text or "").strip().isdigit():
        return 0
    return int(element.text or 0) * _UNITS.get(element.get("unit", "KiB"), 1024) // 1024


def domain_facts(xml: str) -> DomainFacts:
    root = _parse(xml)
    return DomainFacts(
        memory_kib=_kib(root.find("memory")),
        vcpus=int((root.findtext("vcpu") or "0").strip() or 0),
        macs=tuple(
            str(m.get("address"))
            for m in root.iterfind("devices/interface/mac")
            if m.get("address")
        ),
        disks=tuple(
            str(s.get("file")) for s in root.iterfind("devices/disk/source") if s.get("file")
        ),
        marks=Marks.of(root),
    )


def carried(marks: Marks | None, broker: str, tags: Iterable[str]) -> bool:
    """Whether a domain carries the broker's mark and every tag in ``tags``."""
    return marks is not None and marks.broker == broker and set(tags) <= set(marks.tags)
