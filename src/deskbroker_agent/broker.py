"""The broker's agent API as the agent speaks it: enrol, refresh, heartbeat, events."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deskbroker_agent.config import AgentConfig
from deskbroker_agent.http import Reply, Unreachable, request
from deskbroker_agent.identity import Identity
from deskbroker_agent.spool import write_atomic

log = logging.getLogger("deskbroker_agent.broker")
API = "/api/v1/agent"


class Refused(Exception):
    """The broker answered no for good (4xx); the message is its problem detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class Retry(Exception):
    """The broker is unreachable or overloaded (5xx, 429): try again later."""


@dataclass
class Credential:
    """What enrolment gave: the desktop, its short-lived token and the refresh secret."""

    desktop_id: str
    desktop_name: str
    token: str
    expires_at: int
    refresh_secret: str

    @classmethod
    def load(cls, path: Path) -> Credential | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self)).encode())


@dataclass
class Pending:
    """An enrolment the broker holds for an administrator's approval."""

    poll_handle: str
    retry_after_s: int
    detail: str

    @classmethod
    def load(cls, path: Path) -> Pending | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self)).encode())


def _credential_or_pending(answer: Any) -> Credential | Pending:
    if isinstance(answer, dict) and "poll_handle" in answer:
        return Pending(
            poll_handle=str(answer["poll_handle"]),
            retry_after_s=int(answer.get("retry_after_s") or 30),
            detail=str(answer.get("detail", "")),
        )
    return Credential(
        desktop_id=answer["desktop_id"],
        desktop_name=answer["desktop_name"],
        token=answer["token"],
        expires_at=int(answer["expires_at"]),
        refresh_secret=answer["refresh_secret"],
    )


def _detail(reply: Reply) -> str:
    body = reply.json()
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or reply.text()[:300])
    return reply.text()[:300]


class BrokerClient:
    """Calls to the broker, every one bound to the configured source address."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.base = config.broker_url.rstrip("/") + API

    def call(self, path: str, body: dict[str, Any], token: str = "") -> Any:
        """POST ``body``; the JSON answer, ``Refused`` for a 4xx, ``Retry`` otherwise."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            reply = request(
                "POST",
                self.base + path,
                body=body,
                headers=headers,
                source_address=self.config.source_address,
                timeout_s=self.config.request_timeout_s,
                ca_file=self.config.ca_file,
            )
        except Unreachable as exc:
            raise Retry(str(exc)) from exc
        if reply.status >= 500 or reply.status == 429:
            raise Retry(f"{path}: {reply.status} {_detail(reply)}")
        if reply.status >= 400:
            raise Refused(reply.status, _detail(reply))
        return reply.json()

    def enrol(self, secret: str, identity: Identity) -> Credential | Pending:
        """The desktop's credential; or, for a tenant enrolment key that matched no
        desktop, the handle of an enrolment held for an administrator (a 202)."""
        answer = self.call("/enrol", {"secret": secret, "identity": identity.as_report()})
        return _credential_or_pending(answer)

    def poll(self, handle: str) -> Credential | Pending:
        """Ask again about a held enrolment: the credential once it was approved."""
        return _credential_or_pending(self.call("/enrol/poll", {"poll_handle": handle}))

    def refresh(self, credential: Credential) -> Credential:
        answer = self.call(
            "/token",
            {"desktop_id": credential.desktop_id, "refresh_secret": credential.refresh_secret},
        )
        credential.token = answer["token"]
        credential.expires_at = int(answer["expires_at"])
        # The broker replaces the refresh secret on every use: keep the new one, or the
        # next refresh would be refused.
        credential.refresh_secret = answer["refresh_secret"]
        return credential
