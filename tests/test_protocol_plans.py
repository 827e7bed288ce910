"""Protocol plans: every builder's launch file parsed back, per-protocol settings
refused in words, and the plan's ordering and fallback per kind of client."""

from __future__ import annotations

import configparser
import json
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from deskbroker.errors import InvalidInput
from deskbroker.protocols import settings as protocol_settings
from deskbroker.protocols.descriptors import (
    BUILDERS,
    ClientKind,
    ConnectionDescriptor,
    PlanEntry,
    Protocol,
    build,
    choose,
    entries_of,
    with_launch_url,
)
from tests.helpers import Api


def _build(
    protocol: str,
    settings: dict[str, Any] | None = None,
    *,
    port: int | None = None,
    ports: dict[str, int] | None = None,
    user: str = "alice",
    address: str = "10.0.0.5",
) -> ConnectionDescriptor:
    return build(
        Protocol(protocol),
        PlanEntry(Protocol(protocol), port, settings or {}),
        desktop_name="desk-01",
        address=address,
        desktop_ports=ports or {},
        username=user,
    )


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def _rdp(text: str) -> dict[str, tuple[str, str]]:
    """An .rdp file as {name: (type, value)}; every line must be name:type:value."""
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    fields: dict[str, tuple[str, str]] = {}
    for line in text.split("\r\n")[:-1]:
        name, kind, value = line.split(":", 2)
        assert kind in ("s", "i"), line
        assert name not in fields, f"{name} twice"
        fields[name] = (kind, value)
    return fields


def test_every_protocol_has_a_builder_and_a_settings_model() -> None:
    assert set(BUILDERS) == set(Protocol) == set(protocol_settings.SETTINGS)


def test_rdp_file_carries_the_plans_settings() -> None:
    default = _rdp(_build("rdp").content)
    assert default["full address"] == ("s", "10.0.0.5:3389")
    assert default["username"] == ("s", "alice")
    assert default["screen mode id"] == ("i", "2")
    assert default["gatewayusagemethod"] == ("i", "0")
    assert default["redirectclipboard"] == ("i", "1") and default["session bpp"] == ("i", "32")
    custom = _rdp(
        _build(
            "rdp",
            {
                "fullscreen": False,
                "width": 1600,
                "height": 900,
                "multimon": True,
                "color_depth": 16,
                "clipboard": False,
                "drives": True,
                "printers": True,
                "smartcards": True,
                "usb": True,
                "audio": "remote",
                "microphone": True,
                "rd_gateway": "rdgw.corp.example",
                "rd_gateway_use": "detect",
            },
            port=3390,
        ).content
    )
    assert custom["full address"] == ("s", "10.0.0.5:3390")
    assert custom["screen mode id"] == ("i", "1")
    assert (custom["desktopwidth"], custom["desktopheight"]) == (("i", "1600"), ("i", "900"))
    assert custom["use multimon"] == ("i", "1") and custom["session bpp"] == ("i", "16")
    assert custom["redirectclipboard"] == ("i", "0")
    assert custom["redirectdrives"] == ("i", "1") and custom["drivestoredirect"] == ("s", "*")
    assert custom["redirectprinters"] == ("i", "1")
    assert custom["redirectsmartcards"] == ("i", "1")
    assert custom["usbdevicestoredirect"] == ("s", "*")
    assert custom["audiomode"] == ("i", "1") and custom["audiocapturemode"] == ("i", "1")
    assert custom["gatewayhostname"] == ("s", "rdgw.corp.example")
    assert custom["gatewayusagemethod"] == ("i", "2")


def test_vnc_file_and_uri() -> None:
    vnc = _build("vnc", {"view_only": True, "shared": False}, ports={"vnc": 5901})
    parsed = _ini(vnc.content)
    assert dict(parsed["Connection"]) == {"Host": "10.0.0.5", "Port": "5901"}
    assert dict(parsed["Options"]) == {"FullScreen": "0", "Shared": "0", "ViewOnly": "1"}
    assert vnc.uri == "vnc://10.0.0.5:5901" and vnc.filename == "desk-01.vnc"
    assert _build("vnc", address="fe80::1").uri == "vnc://[fe80::1]:5900"


def test_ssh_user_template() -> None:
    assert _build("ssh").uri == "ssh://alice@10.0.0.5:22"
    fixed = _build("ssh", {"user_template": "ubuntu"}, port=2222)
    assert fixed.uri == "ssh://ubuntu@10.0.0.5:2222" and fixed.content == fixed.uri + "\n"
    short = _build("ssh", {"user_template": "{USER_NAME}"}, user="CORP\\alice")
    assert short.uri == "ssh://alice@10.0.0.5:22"
    both = _build("ssh", {"user_template": "{USER_NAME}.{DOMAIN}"}, user="bob@corp.example")
    assert urlsplit(both.uri).username == "bob.corp.example"


def test_spice_vv_file() -> None:
    vv = _build("spice", {"tls_port": 5901, "fullscreen": True, "usb_redirect": False})
    section = _ini(vv.content)["virt-viewer"]
    assert section["type"] == "spice" and section["host"] == "10.0.0.5"
    assert (section["port"], section["tls-port"]) == ("5900", "5901")
    assert section["fullscreen"] == "1" and section["enable-usbredir"] == "0"
    assert section["delete-this-file"] == "1"
    assert vv.filename == "desk-01.vv" and vv.media_type == "application/x-virt-viewer"
    assert "tls-port" not in _ini(_build("spice").content)["virt-viewer"]


def test_html5_descriptors_carry_the_target_and_the_page_options() -> None:
    page = _build("html5-vnc", {"view_only": True, "resize": "remote"}, ports={"vnc": 5901})
    # The VNC server the relay reaches is the desktop's vnc port.
    assert (page.host, page.port) == ("10.0.0.5", 5901)
    options = json.loads(page.content)
    assert options["protocol"] == "html5-vnc" and options["view_only"] is True
    assert options["resize"] == "remote" and page.options["quality"] == 6
    shell = _build("html5-ssh", {"user_template": "{USER_NAME}", "font_size": 18}, user="a@b")
    assert (shell.port, shell.options["user"], shell.options["font_size"]) == (22, "a", 18)
    rdp = _build("html5-rdp", ports={"rdp": 3390})
    assert (rdp.port, rdp.uri) == (3390, "rdp://10.0.0.5:3390")
    # The connect service completes it with the gateway's page; the options stay.
    linked = with_launch_url(page, "https://gw.example/viewer/vnc.html#ticket=t")
    assert linked.uri == "https://gw.example/viewer/vnc.html#ticket=t"
    assert linked.content == linked.uri + "\r\n" and linked.options == page.options


def test_nomachine_nxs_file() -> None:
    nxs = _build("nomachine", {"service": "ssh", "fullscreen": True}, user='al"<ice>')
    assert nxs.content.startswith("<!DOCTYPE NXClientSettings>\n")
    # Our own output, parsed back.
    root = ET.fromstring(nxs.content.split("\n", 1)[1])  # noqa: S314
    assert root.tag == "NXClientSettings"
    options = {
        (group.get("name"), option.get("key")): option.get("value")
        for group in root.iter("group")
        for option in group.iter("option")
    }
    assert options[("General", "Server host")] == "10.0.0.5"
    assert options[("General", "Server port")] == "4000"
    assert options[("General", "Connection service")] == "ssh"
    assert options[("General", "Resolution")] == "fullscreen"
    # A name with XML's special characters stays a value, escaped.
    assert options[("Login", "User")] == 'al"<ice>'
    assert nxs.filename == "desk-01.nxs"


def test_dcv_file() -> None:
    dcv = _build("dcv", {"session_id": "dev-1", "fullscreen": True, "web_url_path": "/dcv"})
    parsed = _ini(dcv.content)
    assert parsed["version"]["format"] == "1.0"
    connect = parsed["connect"]
    assert (connect["host"], connect["port"], connect["sessionid"]) == ("10.0.0.5", "8443", "dev-1")
    assert connect["user"] == "alice" and connect["weburlpath"] == "/dcv"
    assert parsed["options"]["fullscreen"] == "true"
    assert dcv.uri == "dcv://10.0.0.5:8443/dcv/#dev-1" and dcv.filename == "desk-01.dcv"


def test_pcoip_uri() -> None:
    direct = urlsplit(_build("pcoip", user="CORP\\alice").uri)
    assert (direct.scheme, direct.netloc, direct.path) == ("pcoip", "10.0.0.5", "/connect")
    assert parse_qs(direct.query) == {"user": ["CORP\\alice"], "desktopid": ["desk-01"]}
    managed = urlsplit(_build("pcoip", {"connection_manager": "cm.corp.example"}).uri)
    assert managed.netloc == "cm.corp.example"
    assert urlsplit(_build("pcoip", port=8443).uri).netloc == "10.0.0.5:8443"


def test_tgx_and_rgs_files() -> None:
    tgx = _ini(_build("tgx", {"fullscreen": True}).content)
    assert dict(tgx["connection"]) == {"host": "10.0.0.5", "port": "40001", "user": "alice"}
    assert tgx["display"]["fullscreen"] == "true"
    rgs = _build("rgs", port=42000)
    properties = dict(line.split("=", 1) for line in rgs.content.splitlines())
    assert properties["Rgreceiver.Session.0.IsConnectOnStartup"] == "1"
    assert properties["Rgreceiver.Session.0.Hostname"] == "10.0.0.5:42000"
    assert properties["Rgreceiver.Session.0.Username"] == "alice"
    assert rgs.filename == "desk-01.rgreceiver"
    default = _build("rgs").content
    assert "Rgreceiver.Session.0.Hostname=10.0.0.5\n" in default


@pytest.mark.parametrize("protocol", [p.value for p in Protocol])
def test_no_name_breaks_a_launch_file_line(protocol: str) -> None:
    descriptor = _build(protocol, user="alice\r\nfull address:s:evil")
    clean = _build(protocol, user="alice")
    lines = descriptor.content.splitlines()
    assert len(lines) == len(clean.content.splitlines())
    assert not any(line.strip().startswith("full address:s:evil") for line in lines)


# --- settings refused in words ------------------------------------------------------------
@pytest.mark.parametrize(
    ("protocol", "settings", "words"),
    [
        ("rdp", {"color_depth": 7}, "rdp setting color_depth"),
        ("rdp", {"rd_gateway": "gw host\n"}, "is not a host name or IP address"),
        ("rdp", {"audio": "loud"}, "rdp setting audio"),
        ("vnc", {"x": 1}, "vnc has no setting 'x'; its settings: fullscreen, shared, view_only"),
        ("ssh", {"user_template": "{NAME}"}, "unknown tag {NAME}"),
        ("ssh", {"user_template": "a b"}, "a user template holds letters"),
        ("spice", {"tls_port": 0}, "spice setting tls_port"),
        ("html5-vnc", {"quality": 10}, "html5-vnc setting quality"),
        ("dcv", {"session_id": "a/b"}, "dcv setting session_id"),
        ("pcoip", {"connection_manager": "not a host"}, "is not a host name"),
        ("nomachine", {"service": "telnet"}, "nomachine setting service"),
    ],
)
def test_bad_settings_are_refused_in_words(
    protocol: str, settings: dict[str, Any], words: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        protocol_settings.validate(Protocol(protocol), settings)
    assert words in refused.value.detail


def test_the_admin_api_refuses_bad_settings_with_422(api: Api) -> None:
    plan = api.post(
        "protocol-plans",
        {
            "name": "everything",
            "protocols": [
                {"protocol": "html5-vnc", "settings": {"view_only": True}},
                {"protocol": "spice", "settings": {"tls_port": 5901}},
                {"protocol": "nomachine"},
                {"protocol": "dcv", "settings": {"session_id": "console"}},
                {"protocol": "pcoip"},
                {"protocol": "tgx"},
                {"protocol": "rgs"},
                {"protocol": "html5-ssh", "settings": {"font_size": 16}},
            ],
        },
    )
    assert [p["protocol"] for p in plan["protocols"]][:3] == ["html5-vnc", "spice", "nomachine"]
    assert plan["protocols"][0]["settings"] == {"view_only": True}
    bad = api.post(
        "protocol-plans",
        {"name": "bad", "protocols": [{"protocol": "dcv", "settings": {"fullscreen": "maybe"}}]},
        status=422,
    )
    assert "dcv setting fullscreen" in bad["detail"]


# --- ordering and fallback ----------------------------------------------------------------
PLAN = [
    {"protocol": "rdp", "settings": {}},
    {"protocol": "html5-vnc", "settings": {}},
    {"protocol": "vnc", "settings": {}},
    {"protocol": "ssh", "settings": {}},
]


def _chosen(plan: list[dict[str, Any]] | None, requested: str | None = None, **how: Any) -> str:
    protocol, _ = choose(None if plan is None else entries_of(plan), requested, **how)
    return protocol.value


def test_the_plan_order_decides_per_kind_of_client() -> None:
    # A caller that says nothing of itself gets the plan's first protocol.
    assert _chosen(PLAN) == "rdp"
    # A browser gets the first protocol that opens in the page.
    assert _chosen(PLAN, client=ClientKind.BROWSER) == "html5-vnc"
    # ...or, with none in the plan, the first (a file to download).
    assert _chosen(PLAN[2:], client=ClientKind.BROWSER) == "vnc"
    # With no gateway to carry a page, the first native protocol (its file to download).
    assert _chosen(PLAN, client=ClientKind.BROWSER, in_page=False) == "rdp"
    assert _chosen(PLAN[1:], client=ClientKind.BROWSER, in_page=False) == "vnc"
    # ...and a plan of pages only still gives its page (the connect then says why not).
    assert _chosen(PLAN[1:2], client=ClientKind.BROWSER, in_page=False) == "html5-vnc"
    # A native client gets the first it has a viewer for, in the plan's order.
    assert _chosen(PLAN, client=ClientKind.NATIVE, accepts=["ssh", "vnc"]) == "vnc"
    # ...else the first native protocol, never an HTML5 one.
    assert _chosen(PLAN[1:], client=ClientKind.NATIVE, accepts=["spice"]) == "vnc"
    # ...and only an HTML5 plan gives it the HTML5 protocol (a page to open).
    assert _chosen(PLAN[1:2], client=ClientKind.NATIVE) == "html5-vnc"
    # A protocol asked by name wins whatever the client.
    assert _chosen(PLAN, "ssh", client=ClientKind.BROWSER) == "ssh"
    with pytest.raises(InvalidInput, match="offered: rdp, html5-vnc, vnc, ssh"):
        choose(entries_of(PLAN), "spice")
    # No plan: RDP, then VNC, then SSH.
    assert _chosen(None, client=ClientKind.NATIVE, accepts=["ssh"]) == "ssh"
    # A protocol a later version stored is skipped, not an error.
    assert _chosen([{"protocol": "future"}, {"protocol": "vnc"}]) == "vnc"
    # ...but a plan of nothing this broker knows offers nothing (not the default plan).
    with pytest.raises(InvalidInput, match="offers no protocol this broker knows"):
        _chosen([{"protocol": "future"}])


def test_connect_follows_the_plan_for_browser_and_native_clients(api: Api) -> None:
    ids = api.seed_pool(1, users=1, ports={"vnc": 5901, "ssh": 2222})
    plan = api.post("protocol-plans", {"name": "mixed", "protocols": PLAN})
    api.patch(
        f"policies/{ids['policy']}",
        {"entries": [{"pool_id": ids["pool"], "protocol_plan_id": plan["id"]}]},
    )
    login = api.login("user0")
    desktop = login["offers"][0]["desktop"]["id"]
    url = f"/api/v1/client/desktops/{desktop}/connect"
    headers = {"Authorization": f"Bearer {login['token']}"}

    def connect(body: dict[str, Any], status: int = 200) -> dict[str, Any]:
        answer = api.client.post(url, json=body, headers=headers)
        assert answer.status_code == status, answer.text
        result: dict[str, Any] = answer.json()
        return result

    # A browser gets the plan's first HTML5 protocol, which needs a gateway; this broker
    # has none (tests/test_gateway.py connects through one), so the browser gets the
    # plan's first native protocol's launch file instead, and an HTML5 protocol asked by
    # name is refused in words.
    file = connect({"client": "browser"})
    assert (file["protocol"], file["filename"]) == ("rdp", "lab-000.rdp")
    assert "full address:s:" in file["content"] and file.get("launch_url") is None
    page = connect({"protocol": "html5-vnc"}, status=409)
    assert "html5-vnc needs the gateway" in page["detail"]
    assert connect({"client": "native", "accepts": ["ssh"]})["port"] == 2222
    assert connect({"client": "native", "accepts": ["nomachine"]})["protocol"] == "rdp"
    assert connect({})["protocol"] == "rdp"
    bad = connect({"client": "fridge"}, status=422)
    assert "client" in bad["detail"]
    too_many = connect({"client": "native", "accepts": ["vnc"] * 21}, status=422)
    assert "accepts" in too_many["detail"]
