"""The gateway's configuration: ``DESKBROKER_GATEWAY_*`` environment variables."""

from __future__ import annotations

import os

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deskbroker import outbound
from deskbroker.config import check_secret_key


def parse_port_range(text: str) -> tuple[int, int]:
    """``"20001-23000"`` as (first, last); ValueError in words."""
    first, sep, last = text.partition("-")
    try:
        low, high = int(first), int(last if sep else first)
    except ValueError as exc:
        raise ValueError(
            f"forward_ports: {text!r} is not a port range such as 20001-23000"
        ) from exc
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"forward_ports: {text!r} is not a port range within 1-65535")
    return low, high


class GatewaySettings(BaseSettings):
    """Everything an operator sets on a gateway. Environment wins over the config file."""

    model_config = SettingsConfigDict(
        env_prefix="DESKBROKER_GATEWAY_",
        env_file=os.environ.get("DESKBROKER_GATEWAY_CONFIG", "gateway.conf"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    key: str = Field(
        default="",
        description="the secret shared with the brokers (their DESKBROKER_GATEWAY_KEY): it "
        "verifies tickets and signs the gateway's reports",
    )
    id: str = Field(
        default="gateway", min_length=1, max_length=64, description="this gateway's name in tickets"
    )
    host: str = Field(default="127.0.0.1", description="address the HTML5 listener binds")
    port: int = Field(default=8443, ge=1, le=65535)
    forward_host: str = Field(
        default="127.0.0.1", description="address the port-forward listeners bind"
    )
    forward_ports: str = Field(
        default="20001-23000", description="the port range of TCP forwards for native viewers"
    )
    broker_url: str = Field(
        default="",
        description="a broker's base URL the gateway reports connections to; empty: no reports",
    )
    guacd: str = Field(
        default="",
        description="host:port of an external guacd for HTML5 RDP; empty: HTML5 RDP is off",
    )
    drain_timeout_s: float = Field(
        default=3600.0,
        ge=0,
        le=86400,
        description="how long a draining gateway waits for open connections before it exits",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, le=120)
    ssh_known_hosts: str = Field(
        default="",
        description="an OpenSSH known_hosts file the SSH-in-the-browser client checks "
        "desktops against when the broker's ticket carries no host key for the desktop",
    )
    max_connections: int = Field(default=2000, ge=1, le=100000)
    outbound_deny: str = Field(
        default=outbound.DEFAULT_DENY,
        description="networks no ticket's desktop is reached in (the broker's "
        "DESKBROKER_OUTBOUND_DENY): the gateway host's loopback, link-local, metadata",
    )
    outbound_allow: str = Field(
        default="",
        description="networks allowed even inside a denied one (the broker's "
        "DESKBROKER_OUTBOUND_ALLOW); the most specific network decides. The gateway "
        "host's own addresses (but loopback) are denied always: only an entry of exactly "
        "one of them (10.0.0.5/32) opens it",
    )

    @field_validator("outbound_deny", "outbound_allow")
    @classmethod
    def _networks(cls, value: str, info: ValidationInfo) -> str:
        outbound.parse_networks(value, str(info.field_name))
        return value

    @property
    def outbound_policy(self) -> outbound.OutboundPolicy:
        """What the gateway process installs: where a ticket's desktop may be. The
        gateway host's own addresses are refused as the broker's are on its host."""
        return outbound.OutboundPolicy.from_text(
            self.outbound_allow, self.outbound_deny, host_words="the gateway's own host"
        )

    @field_validator("key")
    @classmethod
    def _strong(cls, value: str) -> str:
        check_secret_key(value, "DESKBROKER_GATEWAY_KEY")
        return value

    @field_validator("forward_ports")
    @classmethod
    def _range(cls, value: str) -> str:
        parse_port_range(value)
        return value

    @property
    def port_range(self) -> tuple[int, int]:
        return parse_port_range(self.forward_ports)

    @property
    def guacd_address(self) -> tuple[str, int] | None:
        if not self.guacd:
            return None
        host, _, port = self.guacd.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    @field_validator("guacd")
    @classmethod
    def _guacd(cls, value: str) -> str:
        if value:
            _host, sep, port = value.rpartition(":")
            if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"guacd: {value!r} is not host:port such as 10.0.0.5:4822")
        return value
