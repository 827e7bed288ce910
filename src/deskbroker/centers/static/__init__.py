"""The static center: physical or uncategorised machines registered by name and address,
powered (where configured) by Wake-on-LAN and a Redfish BMC."""

from deskbroker.centers.static.driver import StaticCenter

__all__ = ["StaticCenter"]
