"""Which desktop this is: the metadata service (OpenStack, then EC2 paths), else the host.

The broker matches what the agent reports (instance id, addresses, hostname) against its
desktop rows when the agent enrols with a tenant key, and checks it against the desktop
an engine-built machine's secret names.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from deskbroker_agent.http import Unreachable, request

# The metadata key under which the broker's engine puts a built desktop's enrolment secret.
ENROL_KEY = "deskbroker_enrol"


@dataclass
class Identity:
    """What the agent knows about its machine."""

    instance_id: str = ""
    hostname: str = ""
    addresses: list[str] = field(default_factory=list)
    public_ip: str = ""
    source: str = "host"
    # The enrolment secret found in the metadata (engine-built desktops only).
    enrol_secret: str = ""

    def as_report(self) -> dict[str, Any]:
        """The identity as the agent API takes it."""
        return {
            "instance": self.instance_id,
            "hostname": self.hostname,
            "addresses": self.addresses[:16],
            "public_ip": self.public_ip,
        }


def _get(base: str, path: str, source: str, timeout_s: float) -> str | None:
    try:
        reply = request("GET", base.rstrip("/") + path, source_address=source, timeout_s=timeout_s)
    except Unreachable:
        return None
    return reply.text().strip() if reply.status == 200 else None


def _host_addresses() -> list[str]:
    found: list[str] = []
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            address = str(info[4][0])
            if address not in found and not address.startswith("127."):
                found.append(address)
    except OSError:
        pass
    return found


def discover(metadata_url: str, source_address: str = "", timeout_s: float = 3.0) -> Identity:
    """Ask the metadata service (OpenStack tree first, then EC2); fall back to the host."""
    identity = Identity(hostname=socket.gethostname())
    if source_address:
        identity.addresses.append(source_address)
    meta = _get(metadata_url, "/openstack/latest/meta_data.json", source_address, timeout_s)
    if meta:
        import json

        try:
            data = json.loads(meta)
        except ValueError:
            data = {}
        if isinstance(data, dict) and data.get("uuid"):
            identity.instance_id = str(data["uuid"])
            identity.hostname = str(data.get("hostname") or identity.hostname)
            identity.source = "openstack"
            extra = data.get("meta") or {}
            if isinstance(extra, dict):
                identity.enrol_secret = str(extra.get(ENROL_KEY) or "")
    if not identity.instance_id:
        instance = _get(metadata_url, "/latest/meta-data/instance-id", source_address, timeout_s)
        if instance:
            identity.instance_id = instance
            identity.source = "ec2"
    if identity.source != "host":
        local = _get(metadata_url, "/latest/meta-data/local-ipv4", source_address, timeout_s)
        if local and local not in identity.addresses:
            identity.addresses.insert(0, local)
        public = _get(metadata_url, "/latest/meta-data/public-ipv4", source_address, timeout_s)
        identity.public_ip = public or ""
    for address in _host_addresses():
        if address not in identity.addresses:
            identity.addresses.append(address)
    return identity
