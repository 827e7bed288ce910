"""The libvirt center driver (KVM/QEMU, and Xen through libvirt)."""

from deskbroker.centers.libvirt.driver import LibvirtCenter

__all__ = ["LibvirtCenter"]
