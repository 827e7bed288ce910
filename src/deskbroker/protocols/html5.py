"""HTML5 protocols: a desktop in a browser page, through the gateway's relay.

The broker has no file to hand out here: the descriptor names the desktop's service (the
VNC or SSH server the relay reaches) and carries the viewer page's options; the connect
route adds the page's address with its ticket (``launch_url``).
"""

from __future__ import annotations

import json
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
from deskbroker.protocols.native import render_user
from deskbroker.protocols.settings import (
    Html5RdpSettings,
    Html5SshSettings,
    Html5VncSettings,
    read,
)


def _page_options(protocol: Protocol, target: Target, options: dict[str, Any]) -> str:
    return json.dumps({"protocol": protocol.value, "desktop": target.desktop_name, **options})


class Html5VncBuilder(ProtocolBuilder):
    """A VNC desktop in noVNC: the relay's target is the desktop's VNC server."""

    protocol = Protocol.HTML5_VNC

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        s = read(self.protocol, settings)
        assert isinstance(s, Html5VncSettings)
        options = s.model_dump(mode="json")
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=f"vnc://{host_port(target.host, target.port)}",
            filename=f"{safe_name(target.desktop_name)}.html5-vnc.json",
            media_type="application/json",
            content=_page_options(self.protocol, target, options),
            options=options,
        )


class Html5SshBuilder(ProtocolBuilder):
    """A shell in xterm.js: the relay's target is the desktop's SSH server, logged
    into as the plan's user template says."""

    protocol = Protocol.HTML5_SSH

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        s = read(self.protocol, settings)
        assert isinstance(s, Html5SshSettings)
        login = render_user(s.user_template, username)
        options = {**s.model_dump(mode="json"), "user": login}
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=f"ssh://{quote(login, safe='')}@{host_port(target.host, target.port)}",
            filename=f"{safe_name(target.desktop_name)}.html5-ssh.json",
            media_type="application/json",
            content=_page_options(self.protocol, target, options),
            options=options,
        )


class Html5RdpBuilder(ProtocolBuilder):
    """An RDP desktop in the browser through guacd: the target is its RDP server."""

    protocol = Protocol.HTML5_RDP

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        s = read(self.protocol, settings)
        assert isinstance(s, Html5RdpSettings)
        options = {**s.model_dump(mode="json"), "user": username}
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=f"rdp://{host_port(target.host, target.port)}",
            filename=f"{safe_name(target.desktop_name)}.html5-rdp.json",
            media_type="application/json",
            content=_page_options(self.protocol, target, options),
            options=options,
        )
