"""SSH in the browser: xterm.js in the page, an asyncssh client on the gateway.

Frames between the page and the gateway: binary frames carry terminal bytes both ways;
text frames carry JSON control messages. From the page: ``{"type": "password", "value"}``
(the answer to a prompt) and ``{"type": "resize", "cols", "rows"}``. From the gateway:
``{"type": "prompt", "message"}`` (ask the user for their password) and
``{"type": "status", "message"}`` (shown in the terminal, e.g. a refused password).

The user's password passes through the gateway to the desktop's sshd and is kept nowhere,
and only to a desktop whose host key is known: the ticket carries the keys the broker
holds for the desktop (given by an administrator, or learned); without any, the gateway's
own known_hosts file (``DESKBROKER_GATEWAY_SSH_KNOWN_HOSTS``) decides. A ticket that says
``learn_host_key`` (the broker knows none and is set to learn) accepts the key the desktop
shows and the gateway reports it to the broker, which pins it for the next logins. With
none of these the login is refused: a password is never typed into an unknown host.

asyncssh connects to the address the outbound policy was checked against, never to the
desktop's name (a name may resolve elsewhere by the time the password is typed: DNS
rebinding); host keys are still looked up under the name, as an ssh client would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
from starlette.websockets import WebSocket

from deskbroker.domain.tickets import Ticket
from deskbroker.gateway.accounting import Meter
from deskbroker.gateway.relay import CHUNK, TargetDenied, checked_address, run_both

PASSWORD_TRIES = 3
DEFAULT_SIZE = (80, 24)


async def _control(ws: WebSocket, kind: str, message: str) -> None:
    await ws.send_text(json.dumps({"type": kind, "message": message}))


async def _next_control(ws: WebSocket) -> dict[str, Any] | None:
    """The page's next JSON message (binary frames before login are typed-ahead keys, dropped)."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value


def _size(value: dict[str, Any], current: tuple[int, int]) -> tuple[int, int]:
    cols, rows = value.get("cols"), value.get("rows")
    if isinstance(cols, int) and isinstance(rows, int) and 1 <= cols <= 1000 and 1 <= rows <= 1000:
        return cols, rows
    return current


class HostKeyUnknown(Exception):
    """No host key to check the desktop against, and none may be learned."""


def known_hosts(ticket: Ticket, known_hosts_file: str) -> Any:
    """What asyncssh checks the desktop's host key against (see the module's docstring).

    ``None`` (accept the key) only when the ticket says to learn it."""
    if ticket.host_keys:
        try:
            keys = [asyncssh.import_public_key(line) for line in ticket.host_keys]
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise HostKeyUnknown(f"the desktop's host keys cannot be read: {exc}") from exc
        return (keys, [], [])
    if known_hosts_file and Path(known_hosts_file).is_file():
        return known_hosts_file
    if ticket.learn_host_key:
        return None
    raise HostKeyUnknown(
        f"the SSH host key of desktop {ticket.desktop_name} is not known, so no password is "
        "sent to it; an administrator sets the desktop's ssh_host_keys (or the gateway's "
        "known_hosts file)"
    )


async def _login(
    ws: WebSocket,
    ticket: Ticket,
    timeout_s: float,
    known_hosts_file: str = "",
    learned: Callable[[str], None] | None = None,
) -> tuple[asyncssh.SSHClientConnection, tuple[int, int]] | None:
    try:
        trusted = known_hosts(ticket, known_hosts_file)
        # Before any password is asked: no login to an address the policy denies.
        address = await asyncio.wait_for(checked_address(ticket), timeout_s)
    except (HostKeyUnknown, TargetDenied) as exc:
        await _control(ws, "status", str(exc))
        return None
    except OSError as exc:
        await _control(ws, "status", f"desktop {ticket.desktop_name} cannot be reached: {exc}")
        return None
    size = DEFAULT_SIZE
    for _ in range(PASSWORD_TRIES):
        await _control(ws, "prompt", f"{ticket.username}@{ticket.desktop_name}'s password: ")
        while True:
            value = await _next_control(ws)
            if value is None:
                return None
            if value.get("type") == "resize":
                size = _size(value, size)
                continue
            if value.get("type") == "password" and isinstance(value.get("value"), str):
                break
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    address,
                    ticket.port,
                    # known_hosts entries and host certificates name the desktop as the
                    # ticket does, not by the address it was reached at.
                    host_key_alias=ticket.host,
                    username=ticket.username,
                    password=value["value"],
                    known_hosts=trusted,
                    client_keys=[],
                    agent_path=None,
                    preferred_auth=("keyboard-interactive", "password"),
                    # Not the gateway account's ~/.ssh/config: a ProxyJump or HostName
                    # there would take the connection past the checked address.
                    config=None,
                ),
                timeout_s,
            )
        except asyncssh.PermissionDenied:
            await _control(ws, "status", "Permission denied, please try again.")
            continue
        except asyncssh.HostKeyNotVerifiable:
            await _control(
                ws,
                "status",
                f"desktop {ticket.desktop_name} showed an SSH host key that is not the one "
                "known for it; the login was stopped (ask an administrator)",
            )
            return None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            await _control(ws, "status", f"desktop {ticket.desktop_name} cannot be reached: {exc}")
            return None
        if trusted is None and learned is not None:
            key = conn.get_server_host_key()
            if key is not None:
                learned(key.export_public_key().decode().strip())
        return conn, size
    await _control(ws, "status", "Too many wrong passwords; connect again from the portal.")
    return None


async def bridge(
    ws: WebSocket,
    ticket: Ticket,
    meter: Meter,
    timeout_s: float,
    known_hosts_file: str = "",
    learned: Callable[[str], None] | None = None,
) -> None:
    """Log into the desktop with the password the user types, then carry the terminal.

    ``learned`` is told the desktop's host key when the ticket let the gateway learn it."""
    login = await _login(ws, ticket, timeout_s, known_hosts_file, learned)
    if login is None:
        return
    conn, size = login
    async with conn:
        process = await conn.create_process(
            term_type="xterm-256color", term_size=size, encoding=None
        )

        async def down() -> None:
            while True:
                data = await process.stdout.read(CHUNK)
                if not data:
                    return
                meter.down += len(data)
                await ws.send_bytes(data)

        async def up() -> None:
            current = size
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is not None:
                    meter.up += len(data)
                    process.stdin.write(data)
                    continue
                try:
                    value = json.loads(message.get("text") or "")
                except ValueError:
                    continue
                if isinstance(value, dict) and value.get("type") == "resize":
                    current = _size(value, current)
                    process.change_terminal_size(*current)

        await run_both(down(), up())
        process.close()
