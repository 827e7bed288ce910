"""The XML the libvirt center writes and reads, without a host."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from deskbroker.centers.libvirt import domxml


def _spec(**changes: object) -> domxml.DomainSpec:
    values: dict[str, object] = {
        "name": "vdi-001",
        "domain_type": "kvm",
        "memory_mib": 2048,
        "vcpus": 2,
        "disk_path": "/var/lib/libvirt/desktops/vdi-001.qcow2",
        "disk_format": "qcow2",
        "disk_bus": "virtio",
        "network": "default",
        "graphics": "none",
        "marks": domxml.Marks(
            broker="deskbroker",
            metadata={"note": "</meta><script>&"},
            tags=("t-1",),
            volumes=(("desktops", "vdi-001.qcow2"),),
        ),
    }
    values.update(changes)
    return domxml.DomainSpec(**values)  # type: ignore[arg-type]


def test_marks_survive_a_round_trip_whatever_they_hold() -> None:
    xml = domxml.domain_xml(_spec())
    facts = domxml.domain_facts(xml)
    assert facts.marks == _spec().marks
    assert "&lt;/meta&gt;&lt;script&gt;&amp;" in xml
    assert (facts.memory_kib, facts.vcpus) == (2048 * 1024, 2)
    root = ET.fromstring(xml)  # noqa: S314 - our own document
    assert root.get("type") == "kvm"
    assert root.find("devices/disk/target").get("dev") == "vda"  # type: ignore[union-attr]
    assert root.find("devices/interface/model").get("type") == "virtio"  # type: ignore[union-attr]
    assert root.find("features/acpi") is not None  # a graceful shutdown is heard
    assert root.find("devices/graphics") is None


def test_a_xen_guest_gets_xen_disks_and_no_virtio_nic() -> None:
    root = ET.fromstring(  # noqa: S314 - our own document
        domxml.domain_xml(_spec(domain_type="xen", disk_bus="xen", graphics="vnc"))
    )
    assert root.find("devices/disk/target").attrib == {"dev": "xvda", "bus": "xen"}  # type: ignore[union-attr]
    assert root.find("devices/interface/model") is None
    # A console only on the libvirt host's loopback.
    assert root.find("devices/graphics").get("listen") == "127.0.0.1"  # type: ignore[union-attr]


def test_a_domain_without_marks_or_of_another_broker_is_not_ours() -> None:
    bare = "<domain type='kvm'><name>x</name><memory>1024</memory><vcpu>1</vcpu></domain>"
    assert domxml.domain_facts(bare).marks is None
    other = domxml.domain_xml(_spec(marks=domxml.Marks(broker="another", tags=("t-1",))))
    marks = domxml.domain_facts(other).marks
    assert not domxml.carried(marks, "deskbroker", ["t-1"])
    assert domxml.carried(domxml.domain_facts(domxml.domain_xml(_spec())).marks, "deskbroker", [])


def test_xml_with_declarations_is_never_parsed() -> None:
    hostile = (
        '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
        "<domain><name>&b;</name></domain>"
    )
    with pytest.raises(ValueError, match="declaration"):
        domxml.domain_facts(hostile)


def test_an_overlay_names_its_backing_file_and_format() -> None:
    xml = domxml.overlay_xml("vdi-001.qcow2", 40 * 1024**3, "/images/base.raw", "raw")
    facts = domxml.volume_facts(xml)
    assert facts.backing == "/images/base.raw" and facts.format == "qcow2"
    assert facts.capacity_bytes == 40 * 1024**3
