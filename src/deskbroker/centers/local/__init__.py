"""The local center driver: Xvnc sessions on the broker's own host."""

from deskbroker.centers.local.driver import LocalCenter

__all__ = ["LocalCenter"]
