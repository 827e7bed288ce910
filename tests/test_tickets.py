"""Gateway tickets: signed, short-lived, single-use, bound to their gateway (pure)."""

from __future__ import annotations

import base64
import json

import pytest

from deskbroker.domain import tickets
from deskbroker.domain.tickets import ReplayGuard, TicketRefused

KEY = "ticket-test-key-0123456789abcdefghijklmnop"
NOW = 1_800_000_000


def _mint(**extra: object) -> str:
    values: dict[str, object] = {
        "now": NOW,
        "user_id": "u1",
        "username": "alice",
        "tenant_id": "t1",
        "desktop_id": "d1",
        "desktop_name": "desk-1",
        "protocol": "html5-vnc",
        "host": "10.0.0.5",
        "port": 5900,
        "gateway_id": "gw",
        "client": "192.0.2.7",
    }
    values.update(extra)
    text, _ = tickets.mint(KEY, **values)  # type: ignore[arg-type]
    return text


def test_a_ticket_says_what_it_grants() -> None:
    ticket = tickets.verify(_mint(), KEY, now=NOW + 10, gateway_id="gw")
    assert (ticket.user_id, ticket.desktop_id, ticket.protocol) == ("u1", "d1", "html5-vnc")
    assert (ticket.host, ticket.port, ticket.client) == ("10.0.0.5", 5900, "192.0.2.7")
    assert ticket.expires_at == NOW + tickets.DEFAULT_TTL_S


def test_a_forged_ticket_is_refused() -> None:
    # Signed with another key (the user-token key, say).
    forged, _ = tickets.mint(
        "another-key-0123456789abcdefghijklmnopq",
        now=NOW,
        user_id="u1",
        username="alice",
        tenant_id="t1",
        desktop_id="d1",
        desktop_name="desk-1",
        protocol="html5-vnc",
        host="10.0.0.5",
        port=5900,
        gateway_id="gw",
    )
    with pytest.raises(TicketRefused, match="signature is wrong"):
        tickets.verify(forged, KEY, now=NOW, gateway_id="gw")


def test_a_ticket_aimed_at_another_desktop_is_refused() -> None:
    body, signature = _mint().split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(desktop_id="d2", host="10.0.0.6")
    other = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TicketRefused, match="signature is wrong"):
        tickets.verify(f"{other}.{signature}", KEY, now=NOW, gateway_id="gw")


def test_an_expired_ticket_is_refused() -> None:
    text = _mint()
    tickets.verify(text, KEY, now=NOW + 60, gateway_id="gw")
    with pytest.raises(TicketRefused, match="expired 1 s ago"):
        tickets.verify(text, KEY, now=NOW + 61, gateway_id="gw")


def test_a_ticket_from_the_future_and_for_another_gateway_are_refused() -> None:
    with pytest.raises(TicketRefused, match="not valid yet"):
        tickets.verify(_mint(now=NOW + 100), KEY, now=NOW, gateway_id="gw")
    with pytest.raises(TicketRefused, match="another gateway"):
        tickets.verify(_mint(), KEY, now=NOW, gateway_id="gw-2")


@pytest.mark.parametrize("text", ["", "abc", "a.b.c", "x" * 5000, "!!.??", "e30.sig"])
def test_garbage_is_refused_in_words(text: str) -> None:
    with pytest.raises(TicketRefused):
        tickets.verify(text, KEY, now=NOW, gateway_id="gw")


def test_a_ticket_opens_one_connection() -> None:
    guard = ReplayGuard()
    ticket = tickets.verify(_mint(), KEY, now=NOW, gateway_id="gw")
    guard.consume(ticket, now=NOW)
    with pytest.raises(TicketRefused, match="used already"):
        guard.consume(ticket, now=NOW + 1)
    # Expired ids are forgotten once the guard grows; an expired ticket fails verify anyway.
    for i in range(1100):
        other = tickets.verify(_mint(), KEY, now=NOW, gateway_id="gw")
        guard.consume(other, now=NOW + 1000 + i)
    assert len(guard) < 1100
