"""Descriptors of the open protocols a native viewer reads: RDP, VNC, SSH, SPICE."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from deskbroker.protocols.base import (
    ConnectionDescriptor,
    ProtocolBuilder,
    Target,
    host_port,
    safe_name,
)
from deskbroker.protocols.kinds import Protocol
from deskbroker.protocols.settings import (
    RdGatewayUse,
    RdpAudio,
    RdpSettings,
    SpiceSettings,
    SshSettings,
    VncSettings,
    read,
)


def _flag(value: bool) -> int:
    return 1 if value else 0


def render_user(template: str, username: str) -> str:
    """A user template filled in: ``{USER}`` is the name as typed at sign-in,
    ``{USER_NAME}`` without its domain (``CORP\\alice``, ``alice@corp`` → ``alice``),
    ``{DOMAIN}`` the domain alone."""
    name, domain = username, ""
    if "\\" in name:
        domain, name = name.split("\\", 1)
    elif "@" in name:
        name, domain = name.split("@", 1)
    values = {"USER": username, "USER_NAME": name, "DOMAIN": domain}
    return re.sub(r"\{([A-Z_]+)\}", lambda m: values.get(m.group(1), ""), template)


class RdpBuilder(ProtocolBuilder):
    """A Microsoft ``.rdp`` file (``name:type:value`` lines, CRLF), read by mstsc,
    FreeRDP and Remmina."""

    protocol = Protocol.RDP

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        s = read(self.protocol, settings)
        assert isinstance(s, RdpSettings)
        address = host_port(target.host, target.port)
        lines = [
            f"full address:s:{address}",
            f"username:s:{username}",
            f"screen mode id:i:{2 if s.fullscreen else 1}",
        ]
        if s.width is not None and s.height is not None:
            lines += [f"desktopwidth:i:{s.width}", f"desktopheight:i:{s.height}"]
        audio = {RdpAudio.LOCAL: 0, RdpAudio.REMOTE: 1, RdpAudio.OFF: 2}[s.audio]
        lines += [
            f"use multimon:i:{_flag(s.multimon)}",
            f"session bpp:i:{int(s.color_depth)}",
            f"redirectclipboard:i:{_flag(s.clipboard)}",
            f"redirectprinters:i:{_flag(s.printers)}",
            f"redirectdrives:i:{_flag(s.drives)}",
            f"redirectsmartcards:i:{_flag(s.smartcards)}",
            f"audiomode:i:{audio}",
            f"audiocapturemode:i:{_flag(s.microphone)}",
        ]
        if s.drives:
            lines.append("drivestoredirect:s:*")
        if s.usb:
            lines.append("usbdevicestoredirect:s:*")
        if s.rd_gateway is not None:
            usage = 1 if s.rd_gateway_use is RdGatewayUse.ALWAYS else 2
            lines += [
                f"gatewayhostname:s:{s.rd_gateway}",
                f"gatewayusagemethod:i:{usage}",
                "gatewayprofileusagemethod:i:1",
            ]
        else:
            lines.append("gatewayusagemethod:i:0")
        lines += ["authentication level:i:2", "prompt for credentials:i:0"]
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=f"rdp://full%20address=s:{quote(address)}&username=s:{quote(username)}",
            filename=f"{safe_name(target.desktop_name)}.rdp",
            media_type="application/x-rdp",
            content="\r\n".join(lines) + "\r\n",
            options=s.model_dump(mode="json"),
        )


class VncBuilder(ProtocolBuilder):
    """A ``.vnc`` file (``[Connection] Host= Port=`` and ``[Options]``), the format
    RealVNC writes and TigerVNC and Remmina import."""

    protocol = Protocol.VNC

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        s = read(self.protocol, settings)
        assert isinstance(s, VncSettings)
        lines = [
            "[Connection]",
            f"Host={target.host}",
            f"Port={target.port}",
            "[Options]",
            f"FullScreen={_flag(s.fullscreen)}",
            f"Shared={_flag(s.shared)}",
            f"ViewOnly={_flag(s.view_only)}",
        ]
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=f"vnc://{host_port(target.host, target.port)}",
            filename=f"{safe_name(target.desktop_name)}.vnc",
            media_type="application/x-vnc",
            content="\n".join(lines) + "\n",
            options=s.model_dump(mode="json"),
        )


class SshBuilder(ProtocolBuilder):
    """An ``ssh://user@host:port`` URI (the IETF draft's form), the login name from the
    plan's user template."""

    protocol = Protocol.SSH

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        s = read(self.protocol, settings)
        assert isinstance(s, SshSettings)
        login = render_user(s.user_template, username)
        uri = f"ssh://{quote(login, safe='')}@{host_port(target.host, target.port)}"
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=uri,
            filename=f"{safe_name(target.desktop_name)}.ssh.txt",
            media_type="text/plain",
            content=uri + "\n",
            options={**s.model_dump(mode="json"), "user": login},
        )


class SpiceBuilder(ProtocolBuilder):
    """A virt-viewer ``.vv`` file (an ini ``[virt-viewer]`` section), opened by
    ``remote-viewer``."""

    protocol = Protocol.SPICE

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        s = read(self.protocol, settings)
        assert isinstance(s, SpiceSettings)
        lines = [
            "[virt-viewer]",
            "type=spice",
            f"host={target.host}",
            f"port={target.port}",
        ]
        if s.tls_port is not None:
            lines.append(f"tls-port={s.tls_port}")
        lines += [
            f"title={target.desktop_name} - %d",
            f"fullscreen={_flag(s.fullscreen)}",
            f"enable-usbredir={_flag(s.usb_redirect)}",
            f"enable-smartcard={_flag(s.smartcard)}",
            "delete-this-file=1",
        ]
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=f"spice://{host_port(target.host, target.port)}"
            + (f"?tls-port={s.tls_port}" if s.tls_port is not None else ""),
            filename=f"{safe_name(target.desktop_name)}.vv",
            media_type="application/x-virt-viewer",
            content="\n".join(lines) + "\n",
            options=s.model_dump(mode="json"),
        )
