"""deskbroker: an open, vendor-neutral connection broker for virtual desktops."""

__version__ = "0.1.0"
