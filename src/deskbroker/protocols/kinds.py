"""The protocols a plan may offer, and which kind of client opens each."""

from __future__ import annotations

from enum import StrEnum


class Protocol(StrEnum):
    """A protocol a protocol plan may list (each at most once per plan)."""

    RDP = "rdp"
    VNC = "vnc"
    SSH = "ssh"
    SPICE = "spice"
    HTML5_VNC = "html5-vnc"
    HTML5_SSH = "html5-ssh"
    # RDP in the browser through an external guacd (the gateway's part).
    HTML5_RDP = "html5-rdp"
    NOMACHINE = "nomachine"
    DCV = "dcv"
    PCOIP = "pcoip"
    TGX = "tgx"
    RGS = "rgs"


class ClientKind(StrEnum):
    """Who asks for the connection: a web browser (the portal) or a native client (the
    ``deskbroker connect`` CLI, a thin client) that launches a viewer program."""

    BROWSER = "browser"
    NATIVE = "native"


# What each HTML5 protocol speaks to the desktop: an HTML5 VNC page talks to the same
# VNC server as a native viewer, so it shares the desktop's ``vnc`` port.
HTML5_NATIVE: dict[Protocol, Protocol] = {
    Protocol.HTML5_VNC: Protocol.VNC,
    Protocol.HTML5_SSH: Protocol.SSH,
    Protocol.HTML5_RDP: Protocol.RDP,
}
# The gateway's viewer page of each HTML5 protocol.
HTML5_PAGES: dict[Protocol, str] = {
    Protocol.HTML5_VNC: "vnc.html",
    Protocol.HTML5_SSH: "ssh.html",
    Protocol.HTML5_RDP: "rdp.html",
}

# Protocols that open inside a browser page (through the gateway's relay); every other
# protocol is a file or URI handed to a native viewer (a browser can download it).
IN_BROWSER = frozenset(HTML5_NATIVE)

# The key of the desktop's ``ports`` attribute each protocol's port is read from.
SERVICE: dict[Protocol, str] = {html5: native.value for html5, native in HTML5_NATIVE.items()}

DEFAULT_PORTS: dict[Protocol, int] = {
    Protocol.RDP: 3389,
    Protocol.VNC: 5900,
    Protocol.SSH: 22,
    Protocol.SPICE: 5900,
    Protocol.HTML5_VNC: 5900,
    Protocol.HTML5_SSH: 22,
    Protocol.HTML5_RDP: 3389,
    Protocol.NOMACHINE: 4000,
    Protocol.DCV: 8443,
    Protocol.PCOIP: 443,
    Protocol.TGX: 40001,
    Protocol.RGS: 42966,
}


def service_of(protocol: Protocol) -> str:
    """The key of the desktop's ``ports`` attribute that gives this protocol's port."""
    return SERVICE.get(protocol, protocol.value)
