"""OpenStack centers: one Keystone v3 project, driven through openstacksdk's proxy layer."""

from deskbroker.centers.openstack.driver import OpenStackCenter

__all__ = ["OpenStackCenter"]
