"""Which ticket protocols go where on the gateway."""

from __future__ import annotations

# Tickets for the WebSocket relays.
HTML5 = ("html5-vnc", "html5-ssh", "html5-rdp")
# Tickets a TCP port forward carries: the native viewers' protocols.
NATIVE = ("rdp", "vnc", "ssh", "spice", "nomachine", "dcv", "pcoip", "tgx", "rgs")
