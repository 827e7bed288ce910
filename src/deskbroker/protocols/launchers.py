"""Launch files and URIs of the commercial remote-display products: NoMachine, Amazon
DCV, PCoIP (HP Anyware), Mechdyne TGX and HP RGS. The broker only writes what the
vendor's client opens; the protocol itself runs between that client and the desktop."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from deskbroker.protocols.base import (
    ConnectionDescriptor,
    ProtocolBuilder,
    Target,
    host_port,
    safe_name,
)
from deskbroker.protocols.kinds import DEFAULT_PORTS, Protocol
from deskbroker.protocols.settings import (
    DcvSettings,
    NoMachineSettings,
    PcoipSettings,
    RgsSettings,
    TgxSettings,
    read,
)


class NoMachineBuilder(ProtocolBuilder):
    """A NoMachine ``.nxs`` session file: XML ``NXClientSettings`` with option groups,
    opened by ``nxplayer --session FILE``."""

    protocol = Protocol.NOMACHINE

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        s = read(self.protocol, settings)
        assert isinstance(s, NoMachineSettings)
        root = ET.Element("NXClientSettings", {"application": "nxclient", "version": "1.3"})
        groups = {
            "General": [
                ("Connection service", s.service.value),
                ("Server host", target.host),
                ("Server port", str(target.port)),
                ("Session", "unix"),
                ("Desktop", "console"),
                ("Resolution", "fullscreen" if s.fullscreen else "available"),
            ],
            "Login": [
                ("User", username),
                ("Server authentication method", "system"),
                ("Auth", "EMPTY_PASSWORD"),
            ],
        }
        for name, options in groups.items():
            group = ET.SubElement(root, "group", {"name": name})
            for key, value in options:
                ET.SubElement(group, "option", {"key": key, "value": value})
        ET.indent(root)
        body = ET.tostring(root, encoding="unicode")
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=f"nx://{quote(username, safe='')}@{host_port(target.host, target.port)}",
            filename=f"{safe_name(target.desktop_name)}.nxs",
            media_type="application/x-nx-session",
            content="<!DOCTYPE NXClientSettings>\n" + body + "\n",
            options=s.model_dump(mode="json"),
        )


class DcvBuilder(ProtocolBuilder):
    """An Amazon DCV ``.dcv`` connection file: ini sections ``[version]`` (format 1.0),
    ``[connect]`` and ``[options]``, opened by ``dcvviewer FILE``."""

    protocol = Protocol.DCV

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        s = read(self.protocol, settings)
        assert isinstance(s, DcvSettings)
        lines = [
            "[version]",
            "format=1.0",
            "",
            "[connect]",
            f"host={target.host}",
            f"port={target.port}",
            f"weburlpath={s.web_url_path}",
            f"sessionid={s.session_id}",
            f"user={username}",
            "",
            "[options]",
            f"fullscreen={'true' if s.fullscreen else 'false'}",
            f"useallmonitors={'true' if s.all_monitors else 'false'}",
        ]
        path = s.web_url_path.rstrip("/")
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=f"dcv://{host_port(target.host, target.port)}{path}/#{s.session_id}",
            filename=f"{safe_name(target.desktop_name)}.dcv",
            media_type="application/x-dcv",
            content="\n".join(lines) + "\n",
            options=s.model_dump(mode="json"),
        )


class PcoipBuilder(ProtocolBuilder):
    """A ``pcoip://`` URI the PCoIP (HP Anyware) client opens:
    ``pcoip://BROKER[:PORT]/connect?user=NAME&desktopid=DESKTOP``; the broker is the
    plan's connection manager, or the desktop's own agent."""

    protocol = Protocol.PCOIP

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        s = read(self.protocol, settings)
        assert isinstance(s, PcoipSettings)
        if s.connection_manager is not None:
            where = s.connection_manager
        elif target.port == DEFAULT_PORTS[Protocol.PCOIP]:
            where = f"[{target.host}]" if ":" in target.host else target.host
        else:
            where = host_port(target.host, target.port)
        query = urlencode({"user": username, "desktopid": target.desktop_name}, quote_via=quote)
        uri = f"pcoip://{where}/connect?{query}"
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=uri,
            filename=f"{safe_name(target.desktop_name)}.pcoip.txt",
            media_type="text/plain",
            content=uri + "\n",
            options=s.model_dump(mode="json"),
        )


class TgxBuilder(ProtocolBuilder):
    """A Mechdyne TGX receiver launch file (``.tgx``): an ini ``[connection]`` section
    with the sender's host, port and user, and ``[display]``."""

    protocol = Protocol.TGX

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        s = read(self.protocol, settings)
        assert isinstance(s, TgxSettings)
        lines = [
            "[connection]",
            f"host={target.host}",
            f"port={target.port}",
            f"user={username}",
            "",
            "[display]",
            f"fullscreen={'true' if s.fullscreen else 'false'}",
        ]
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=f"tgx://{quote(username, safe='')}@{host_port(target.host, target.port)}",
            filename=f"{safe_name(target.desktop_name)}.tgx",
            media_type="application/x-tgx",
            content="\n".join(lines) + "\n",
            options=s.model_dump(mode="json"),
        )


class RgsBuilder(ProtocolBuilder):
    """An HP RGS ``.rgreceiver`` auto-launch file: ``Rgreceiver.*`` property lines
    (session 0 connects at start-up), opened by the RGS Receiver."""

    protocol = Protocol.RGS

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        s = read(self.protocol, settings)
        assert isinstance(s, RgsSettings)
        sender = (
            target.host
            if target.port == DEFAULT_PORTS[Protocol.RGS]
            else host_port(target.host, target.port)
        )
        lines = [
            "Rgreceiver.Session.0.IsConnectOnStartup=1",
            f"Rgreceiver.Session.0.Hostname={sender}",
            f"Rgreceiver.Session.0.Username={username}",
            f"Rgreceiver.Session.0.VirtualDisplay.IsFullScreen={1 if s.fullscreen else 0}",
        ]
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=f"rgs://{host_port(target.host, target.port)}",
            filename=f"{safe_name(target.desktop_name)}.rgreceiver",
            media_type="application/x-rgreceiver",
            content="\n".join(lines) + "\n",
            options=s.model_dump(mode="json"),
        )
