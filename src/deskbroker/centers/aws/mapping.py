"""EC2's JSON, read into the broker's words, and the broker's words written as tags."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from deskbroker.centers.base import DESKTOP_KEY, ImageInfo, MachineInfo
from deskbroker.domain.states import PowerState

_STATE = {
    "pending": PowerState.BUILDING,
    "running": PowerState.RUNNING,
    # Still on until it is down: the broker waits for ``stopped``.
    "stopping": PowerState.RUNNING,
    "stopped": PowerState.STOPPED,
    "shutting-down": PowerState.DELETING,
    "terminated": PowerState.DELETED,
}
# Why EC2 stopped an instance, when a person or the broker hibernated it.
HIBERNATED = "Client.UserInitiatedHibernate"
# EC2 allows 50 tags per resource; the broker's own come first, the rest are cut.
MAX_TAGS = 50
# Never written as a tag: any principal with ec2:DescribeTags in the account reads tags.
SECRET_KEYS = frozenset({"deskbroker_enrol"})


def tags_of(instance: Mapping[str, Any]) -> dict[str, str]:
    return {str(t.get("Key")): str(t.get("Value") or "") for t in instance.get("Tags") or []}


def carries(instance: Mapping[str, Any], tag: str) -> bool:
    """Whether the instance itself carries the broker tag ``tag`` (a tag key): checked
    before adopting or deleting what a filtered listing returned."""
    return tag in tags_of(instance)


def gone(instance: Mapping[str, Any]) -> bool:
    """A terminated instance stays listed for about an hour; for the broker it is gone."""
    return str((instance.get("State") or {}).get("Name") or "") == "terminated"


def power_state(instance: Mapping[str, Any]) -> PowerState:
    name = str((instance.get("State") or {}).get("Name") or "")
    state = _STATE.get(name, PowerState.UNKNOWN)
    reason = str((instance.get("StateReason") or {}).get("Code") or "")
    if state is PowerState.STOPPED and reason == HIBERNATED:
        return PowerState.SUSPENDED
    return state


def write_tags(
    name: str, broker_tags: Iterable[str], metadata: Mapping[str, str]
) -> list[dict[str, str]]:
    """EC2 tags for a new instance: its ``Name``, each broker tag as a key with an empty
    value (what ``tag-key`` filters find), then the request's metadata, cut to EC2's
    limits. Secrets never become tags."""
    tags: dict[str, str] = {"Name": name[:256]}
    for tag in broker_tags:
        tags[tag[:128]] = ""
    for key, value in metadata.items():
        if key in SECRET_KEYS or key.lower().startswith("aws:"):
            continue
        tags.setdefault(key[:128], str(value)[:256])
    return [{"Key": k, "Value": v} for k, v in list(tags.items())[:MAX_TAGS]]


def best_address(instance: Mapping[str, Any]) -> str:
    """A public (Elastic) address beats a private one."""
    return str(instance.get("PublicIpAddress") or instance.get("PrivateIpAddress") or "")


def machine(instance: Mapping[str, Any]) -> MachineInfo:
    tags = tags_of(instance)
    placement = instance.get("Placement") or {}
    state = str((instance.get("State") or {}).get("Name") or "")
    attributes: dict[str, Any] = {
        "state": state,
        "instance_type": instance.get("InstanceType"),
        "image": instance.get("ImageId"),
        "availability_zone": placement.get("AvailabilityZone"),
        "subnet": instance.get("SubnetId"),
        "vpc": instance.get("VpcId"),
        "private_ip": instance.get("PrivateIpAddress"),
        "public_ip": instance.get("PublicIpAddress"),
        "tags": ",".join(k for k, v in tags.items() if v == ""),
        # Tags read like OpenStack metadata, so pool filters and the engine's
        # ``meta.deskbroker_pool`` work the same on every cloud.
        **{f"meta.{k}": v for k, v in tags.items() if v != ""},
    }
    reason = instance.get("StateReason") or {}
    fault = ""
    if state in ("stopped", "terminated", "shutting-down") and str(
        reason.get("Code") or ""
    ).startswith("Server."):
        # AWS stopped or ended it (no capacity, an internal error): the build's failure.
        fault = str(reason.get("Message") or reason.get("Code"))
        attributes["fault"] = fault
    platform = str(instance.get("PlatformDetails") or instance.get("Platform") or "")
    return MachineInfo(
        external_id=str(instance["InstanceId"]),
        name=tags.get("Name") or str(instance["InstanceId"]),
        address=best_address(instance),
        hostname=str(instance.get("PrivateDnsName") or tags.get("Name") or ""),
        os=tags.get("os") or platform,
        power_state=power_state(instance),
        attributes=attributes,
        driver_state={
            "state": state,
            "reason": str(reason.get("Code") or ""),
            "hibernation": bool((instance.get("HibernationOptions") or {}).get("Configured")),
        },
        fault=fault,
        desktop_id=tags.get(DESKTOP_KEY, ""),
        gone=gone(instance),
    )


def image(raw: Mapping[str, Any]) -> ImageInfo:
    return ImageInfo(
        external_id=str(raw["ImageId"]),
        name=str(raw.get("Name") or raw["ImageId"]),
        os=str(raw.get("PlatformDetails") or raw.get("Platform") or ""),
        attributes={
            "state": raw.get("State"),
            "architecture": raw.get("Architecture"),
            "owner": raw.get("OwnerId"),
            "public": raw.get("Public"),
        },
    )
