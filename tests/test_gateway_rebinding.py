"""HTML5 SSH and HTML5 RDP connect to the address the gateway checked against its outbound
policy, not to whatever the desktop's name resolves to a moment later (DNS rebinding).

The name resolves once to the desktop (an allowed address), and from then on to the
gateway host's loopback (denied). Name resolution is the faked boundary; the sshd is
real, guacd is the suite's stand-in (Debian has none), which records the hostname the
gateway hands it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from deskbroker import outbound
from deskbroker.domain import tickets
from deskbroker.outbound import OutboundPolicy
from deskbroker.services.context import BrokerContext
from tests.gateway_support import (
    GATEWAY_KEY,
    SSH_USER,
    PrivateSshd,
    broker_and_gateway,
    private_sshd,
    ssh_page,
)
from tests.rebinding import Trap, resolver
from tests.test_gateway_guac import GuacdStandIn

NAME = "desktop.rebind.test"
# The command typed once the shell is up, and the line its output ends with.
REBIND_CHECK = ("echo rebind-$((6*7))-done", "rebind-42-done\r\n")


def _resolver(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> list[str]:
    """``NAME`` resolves to each of ``answers`` in turn; the lookups made."""
    return resolver(monkeypatch, NAME, answers)


def _ticket(protocol: str, port: int, **extra: Any) -> str:
    values: dict[str, Any] = {
        "now": int(time.time()),
        "user_id": "u",
        "username": SSH_USER,
        "tenant_id": "t",
        "desktop_id": "d",
        "desktop_name": "desk",
        "protocol": protocol,
        "host": NAME,
        "port": port,
        "gateway_id": "gw-test",
    }
    values.update(extra)
    return tickets.mint(GATEWAY_KEY, **values)[0]


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[PrivateSshd]:
    with private_sshd(tmp_path) as running:
        yield running


@pytest.fixture
def trap(sshd: PrivateSshd) -> Iterator[Trap]:
    # The same port as the desktop's sshd: a connection by name after the rebinding
    # lands here.
    found = Trap(sshd.port, b"SSH-2.0-internal-service\r\n")
    yield found
    found.server.close()


def _allow_only(address: str) -> None:
    """Only ``address`` of loopback is allowed: the rest stands for the gateway host's
    own services, which a rebound name must not reach."""
    outbound.install(OutboundPolicy.from_text(f"{address}/32", outbound.DEFAULT_DENY))


@pytest.mark.parametrize("trust", ["ticket", "known_hosts"])
def test_ssh_logs_into_the_checked_address_not_the_rebound_name(
    ctx: BrokerContext,
    sshd: PrivateSshd,
    trap: Trap,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    trust: str,
) -> None:
    extra: dict[str, Any] = {}
    if trust == "ticket":
        ticket = _ticket("html5-ssh", sshd.port, host_keys=(sshd.host_key,))
    else:
        # The gateway's known_hosts names the desktop as its ticket does (non-standard
        # port, so the [name]:port form): the key is still found by the name.
        known = tmp_path / "known_hosts"
        known.write_text(f"[{NAME}]:{sshd.port} {sshd.host_key}\n")
        extra["ssh_known_hosts"] = str(known)
        ticket = _ticket("html5-ssh", sshd.port)
    _allow_only("127.0.1.1")
    looked = _resolver(monkeypatch, ["127.0.1.1", "127.0.0.1"])
    with broker_and_gateway(ctx, **extra) as (_broker, gateway):
        seen = asyncio.run(
            ssh_page(f"ws://127.0.0.1:{gateway.port}/ws/ssh?ticket={ticket}", *REBIND_CHECK)
        )
    assert seen[0] == f"prompt: {SSH_USER}@desk's password: ", seen
    assert "rebind-42-done" in seen[-1], seen
    assert trap.accepted == 0
    assert looked == [NAME]  # once, by the check: asyncssh never resolved it again


def test_ssh_host_keys_known_for_another_host_are_still_refused(
    ctx: BrokerContext, sshd: PrivateSshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The alias loosens nothing: a key the known_hosts file holds for another host (here
    # another address) is not the desktop's, by its name or by the address reached.
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.1.2]:{sshd.port} {sshd.host_key}\n")
    _allow_only("127.0.1.1")
    _resolver(monkeypatch, ["127.0.1.1"])
    with broker_and_gateway(ctx, ssh_known_hosts=str(known)) as (_broker, gateway):
        url = f"ws://127.0.0.1:{gateway.port}/ws/ssh?ticket={_ticket('html5-ssh', sshd.port)}"
        seen = asyncio.run(ssh_page(url, *REBIND_CHECK))
    assert seen[-1] == (
        "status: desktop desk showed an SSH host key that is not the one known for it; "
        "the login was stopped (ask an administrator)"
    )


def test_guacd_is_handed_the_checked_address_not_the_name(
    ctx: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An address the policy allows at the check; the gateway host's loopback afterwards.
    outbound.install(OutboundPolicy())
    looked = _resolver(monkeypatch, ["10.1.2.3", "127.0.0.1"])
    with (
        GuacdStandIn() as standin,
        broker_and_gateway(ctx, guacd=f"127.0.0.1:{standin.port}") as (_broker, gateway),
    ):
        url = f"ws://127.0.0.1:{gateway.port}/ws/rdp?ticket={_ticket('html5-rdp', 3389)}"

        async def session() -> str:
            async with websockets.connect(url, subprotocols=["guacamole"]) as ws:
                return str(await asyncio.wait_for(ws.recv(), 5))

        first = asyncio.run(session())
    assert first.startswith("0.,36."), first
    connect = standin.handshake["connect"]
    assert connect[2:4] == ["10.1.2.3", "3389"], connect
    assert NAME not in connect
    assert looked == [NAME]
