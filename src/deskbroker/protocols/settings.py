"""Per-protocol settings of a protocol plan: one pydantic model per protocol.

An administrator's settings are validated here when the plan is written (unknown keys
and bad values are refused with the protocol's own words); a builder reads them back
through the same model, so a default lives in one place.
"""

from __future__ import annotations

import re
from enum import IntEnum, StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from deskbroker.errors import InvalidInput
from deskbroker.protocols.base import usable_host
from deskbroker.protocols.kinds import Protocol

Port = Annotated[int, Field(ge=1, le=65535)]


def _host(value: str) -> str:
    if not usable_host(value):
        raise ValueError(f"{value!r} is not a host name or IP address")
    return value


Host = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_host)]

# The tags a user template may hold; the rest is literal text of a login name.
USER_TAGS = ("USER", "USER_NAME", "DOMAIN")
_TAG = re.compile(r"\{([A-Z_]+)\}")
_LITERAL = re.compile(r"^[A-Za-z0-9._@\\-]*$")


def _user_template(value: str) -> str:
    for match in _TAG.finditer(value):
        if match.group(1) not in USER_TAGS:
            raise ValueError(
                f"unknown tag {{{match.group(1)}}}; known tags: "
                + ", ".join("{" + t + "}" for t in USER_TAGS)
            )
    if not _LITERAL.match(_TAG.sub("", value)):
        raise ValueError("a user template holds letters, digits, . _ @ \\ - and tags only")
    return value


UserTemplate = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_user_template)]


class Settings(BaseModel):
    """A protocol's settings: unknown keys are an error, never dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ColorDepth(IntEnum):
    C8 = 8
    C15 = 15
    C16 = 16
    C24 = 24
    C32 = 32


class RdpAudio(StrEnum):
    LOCAL = "local"  # play on the client
    REMOTE = "remote"  # leave on the desktop
    OFF = "off"


class RdGatewayUse(StrEnum):
    ALWAYS = "always"
    DETECT = "detect"  # bypass it for local addresses


class RdpSettings(Settings):
    fullscreen: bool = True
    width: int | None = Field(default=None, ge=200, le=8192)
    height: int | None = Field(default=None, ge=200, le=8192)
    multimon: bool = False
    color_depth: ColorDepth = ColorDepth.C32
    clipboard: bool = True
    printers: bool = False
    drives: bool = False
    smartcards: bool = False
    usb: bool = False
    audio: RdpAudio = RdpAudio.LOCAL
    microphone: bool = False
    # Microsoft's Remote Desktop Gateway (not deskbroker's gateway, which needs nothing here).
    rd_gateway: Host | None = None
    rd_gateway_use: RdGatewayUse = RdGatewayUse.ALWAYS


class VncSettings(Settings):
    fullscreen: bool = False
    shared: bool = True
    view_only: bool = False


class SshSettings(Settings):
    user_template: UserTemplate = "{USER}"
    x11_forwarding: bool = False


class SpiceSettings(Settings):
    tls_port: Port | None = None
    fullscreen: bool = False
    usb_redirect: bool = True
    smartcard: bool = False


class Html5Resize(StrEnum):
    SCALE = "scale"  # scale the picture to the browser window
    REMOTE = "remote"  # ask the desktop to take the window's size
    OFF = "off"


class Html5VncSettings(Settings):
    view_only: bool = False
    shared: bool = True
    resize: Html5Resize = Html5Resize.SCALE
    quality: int = Field(default=6, ge=0, le=9)
    compression: int = Field(default=2, ge=0, le=9)


class Html5SshSettings(Settings):
    user_template: UserTemplate = "{USER}"
    font_size: int = Field(default=14, ge=8, le=32)


class Html5RdpSettings(Settings):
    """The guacd connection's settings are the gateway's; a plan sets none yet."""


class NxService(StrEnum):
    NX = "nx"
    SSH = "ssh"


class NoMachineSettings(Settings):
    service: NxService = NxService.NX
    fullscreen: bool = False


class DcvSettings(Settings):
    session_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "console"
    fullscreen: bool = False
    all_monitors: bool = False
    web_url_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._/-]{0,200}$")] = "/"


class PcoipSettings(Settings):
    # A PCoIP connection manager brokering the agents; without one the client talks to
    # the desktop's agent directly (it answers as its own broker).
    connection_manager: Host | None = None


class TgxSettings(Settings):
    fullscreen: bool = False


class RgsSettings(Settings):
    fullscreen: bool = False


SETTINGS: dict[Protocol, type[Settings]] = {
    Protocol.RDP: RdpSettings,
    Protocol.VNC: VncSettings,
    Protocol.SSH: SshSettings,
    Protocol.SPICE: SpiceSettings,
    Protocol.HTML5_VNC: Html5VncSettings,
    Protocol.HTML5_SSH: Html5SshSettings,
    Protocol.HTML5_RDP: Html5RdpSettings,
    Protocol.NOMACHINE: NoMachineSettings,
    Protocol.DCV: DcvSettings,
    Protocol.PCOIP: PcoipSettings,
    Protocol.TGX: TgxSettings,
    Protocol.RGS: RgsSettings,
}


def describe(protocol: Protocol) -> str:
    """The settings a protocol has, for error messages and the API's description."""
    return ", ".join(SETTINGS[protocol].model_fields) or "none"


def validate(protocol: Protocol, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as stored (only what the administrator set), or ``InvalidInput``
    naming the protocol, the setting and what is wrong with it."""
    model = SETTINGS[protocol]
    for key in settings:
        if key not in model.model_fields:
            raise InvalidInput(
                f"{protocol.value} has no setting {key!r}; its settings: {describe(protocol)}"
            )
    try:
        parsed = model.model_validate(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidInput(f"{protocol.value} setting {where}: {message}") from exc
    return parsed.model_dump(mode="json", exclude_unset=True)


def read(protocol: Protocol, settings: Any) -> Settings:
    """A stored plan entry's settings with their defaults filled in.

    Settings were validated when the plan was written; one this version no longer
    understands is left out rather than failing the user's connect.
    """
    model = SETTINGS[protocol]
    stored = settings if isinstance(settings, dict) else {}
    known = {k: v for k, v in stored.items() if k in model.model_fields}
    try:
        return model.model_validate(known)
    except ValidationError:
        return model()
