"""Nova's JSON, read into the broker's words."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from deskbroker.centers.base import DESKTOP_KEY, ImageInfo, MachineInfo
from deskbroker.domain.states import PowerState

_STATUS = {
    "BUILD": PowerState.BUILDING,
    "ACTIVE": PowerState.RUNNING,
    "SHUTOFF": PowerState.STOPPED,
    "SUSPENDED": PowerState.SUSPENDED,
    "PAUSED": PowerState.SUSPENDED,
    "SHELVED": PowerState.STOPPED,
    "SHELVED_OFFLOADED": PowerState.STOPPED,
    "ERROR": PowerState.ERROR,
    "DELETED": PowerState.DELETED,
    "SOFT_DELETED": PowerState.DELETING,
    "REBOOT": PowerState.RUNNING,
    "HARD_REBOOT": PowerState.RUNNING,
    # A rebuild gives the machine a new system disk: it is being built again.
    "REBUILD": PowerState.BUILDING,
}

_SHELVED = frozenset({"SHELVED", "SHELVED_OFFLOADED"})
# Metadata key holding the tags the broker gave an instance (comma-separated).
TAGS_KEY = "deskbroker_tags"

_QUOTA = re.compile(r"Quota exceeded for (\w+).*?used (\d+) of (\d+)", re.IGNORECASE)


def power_state(server: dict[str, Any]) -> PowerState:
    if server.get("OS-EXT-STS:task_state") == "deleting":
        return PowerState.DELETING
    return _STATUS.get(str(server.get("status", "")).upper(), PowerState.UNKNOWN)


def shelved(driver_state: Mapping[str, Any]) -> bool:
    """Whether a server (by its ``driver_state``) is shelved: it wakes with unshelve."""
    return str(driver_state.get("status") or "").upper() in _SHELVED


def carries(server: Mapping[str, Any], tag: str) -> bool:
    """Whether the server itself carries ``tag``, as a Nova tag or in the broker's
    metadata: the check made before adopting or deleting what a filtered list returned."""
    if tag in (server.get("tags") or []):
        return True
    metadata = server.get("metadata") or {}
    return tag in str(metadata.get(TAGS_KEY) or "").split(",")


def best_address(server: dict[str, Any]) -> str:
    """A floating address beats a fixed one; IPv4 beats IPv6."""
    fixed: list[tuple[int, str]] = []
    for entries in (server.get("addresses") or {}).values():
        for entry in entries or []:
            rank = 0 if entry.get("OS-EXT-IPS:type") == "floating" else 2
            rank += 0 if entry.get("version", 4) == 4 else 1
            fixed.append((rank, str(entry.get("addr", ""))))
    return min(fixed)[1] if fixed else ""


def partial(server: Mapping[str, Any]) -> bool:
    """Whether ``server`` is Nova's stand-in for a server in a cell that does not answer
    (compute 2.69+): status ``UNKNOWN`` and no name; a listing then gives little more
    than its id, a lookup its flavor and image. Every whole record has a name (Nova
    requires one), so an ``UNKNOWN`` server that has one is reported as it is."""
    return str(server.get("status", "")).upper() == "UNKNOWN" and "name" not in server


def machine(server: dict[str, Any]) -> MachineInfo:
    """The broker's view of one server of Nova's listing or lookup."""
    if partial(server):
        # Nothing to read but that it exists: no name, address, metadata or power.
        return MachineInfo(
            external_id=str(server["id"]),
            name="",
            attributes={"status": "UNKNOWN"},
            driver_state={"status": "UNKNOWN"},
            partial=True,
        )
    metadata = server.get("metadata") or {}
    flavor = server.get("flavor") or {}
    attributes: dict[str, Any] = {
        "status": server.get("status"),
        "task_state": server.get("OS-EXT-STS:task_state"),
        "flavor": flavor.get("original_name") or flavor.get("id"),
        "image": (server.get("image") or {}).get("id")
        if isinstance(server.get("image"), dict)
        else "",
        "availability_zone": server.get("OS-EXT-AZ:availability_zone"),
        "tags": ",".join(server.get("tags") or []),
        **{f"meta.{k}": v for k, v in metadata.items()},
    }
    fault = server.get("fault")
    message = str(fault.get("message") or "") if isinstance(fault, dict) else ""
    if message:
        attributes["fault"] = message
    return MachineInfo(
        external_id=str(server["id"]),
        name=str(server.get("name", "")),
        address=best_address(server),
        hostname=str(server.get("OS-EXT-SRV-ATTR:hostname") or server.get("name", "")),
        os=str(metadata.get("os_type") or metadata.get("os", "")),
        power_state=power_state(server),
        attributes=attributes,
        driver_state={
            "status": server.get("status"),
            "task_state": server.get("OS-EXT-STS:task_state"),
            "updated": server.get("updated"),
        },
        fault=message,
        desktop_id=str(metadata.get(DESKTOP_KEY) or ""),
    )


def image(raw: dict[str, Any]) -> ImageInfo:
    return ImageInfo(
        external_id=str(raw["id"]),
        name=str(raw.get("name") or raw["id"]),
        os=str(raw.get("os_distro") or raw.get("os_type") or ""),
        attributes={
            "status": raw.get("status"),
            "min_disk": raw.get("min_disk"),
            "min_ram": raw.get("min_ram"),
            "visibility": raw.get("visibility"),
        },
    )


def quota_words(message: str) -> str | None:
    """'Quota exceeded for instances: ... used 10 of 10' → 'quota exceeded: instances 10 of 10'."""
    match = _QUOTA.search(message)
    if match is None:
        return None
    return f"quota exceeded: {match.group(1)} {match.group(2)} of {match.group(3)}"
