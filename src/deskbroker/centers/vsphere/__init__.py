"""The vSphere center driver (vCenter through pyvmomi)."""

from deskbroker.centers.vsphere.driver import VsphereCenter

__all__ = ["VsphereCenter"]
