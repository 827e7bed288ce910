"""A libvirt host for the tests: libvirt's own test driver (``test:///<file>``) loaded
from a node description written per test, so no daemon runs and each test starts from
the same host. The test driver keeps its state in the connection that opened it, which
the driver holds for its life: everything a test does goes through one driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

NODE_XML = """<node>
  <domain type='test'>
    <name>hand-made</name>
    <uuid>11111111-2222-3333-4444-555555555555</uuid>
    <memory unit='MiB'>512</memory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
    <devices>
      <interface type='network'>
        <mac address='52:54:00:00:00:01'/><source network='default'/>
      </interface>
    </devices>
  </domain>
  <pool type='dir'>
    <name>desktops</name>
    <uuid>35bb2ad9-388a-cdfe-461a-b8907f6e5301</uuid>
    <capacity unit='GiB'>500</capacity>
    <available unit='GiB'>500</available>
    <target><path>/var/lib/libvirt/desktops</path></target>
    <volume type='file'>
      <name>win11-base.qcow2</name>
      <capacity unit='GiB'>4</capacity>
      <target><path>/var/lib/libvirt/desktops/win11-base.qcow2</path><format type='qcow2'/></target>
    </volume>
  </pool>
  <network>
    <name>default</name>
    <bridge name='virbr0'/>
    <ip address='192.168.122.1' netmask='255.255.255.0'>
      <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
    </ip>
  </network>
</node>
"""


def test_uri(directory: Path) -> str:
    """A fresh test-driver host described in ``directory``."""
    node = directory / "libvirt-node.xml"
    node.write_text(NODE_XML)
    return f"test://{node}"


def center_params(directory: Path, **extra: Any) -> dict[str, Any]:
    """The params of a libvirt center on a fresh test-driver host."""
    return {
        "uri": test_uri(directory),
        "domain_type": "test",
        "storage_pool": "desktops",
        "timeout_s": 20,
        **extra,
    }
