"""The broker's client API as the CLI calls it: one small method per route.

Every failure becomes a ``ClientError`` whose message a person can act on: the broker's
own ``detail`` when it gave one, else what went wrong and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from deskbroker.client.config import ClientError


@dataclass(frozen=True)
class Starting:
    """The desktop is being started: ask again after ``retry_after_s``."""

    desktop_name: str
    message: str
    estimate_s: int
    retry_after_s: float


def problem(response: httpx.Response, signed_in: bool = True) -> str:
    """The broker's reason for a refusal, in its words; a 401 to a token means the
    sign-in is over (a wrong password's 401 keeps the broker's words)."""
    if response.status_code == 401 and signed_in:
        return "your sign-in has expired or was revoked; run `deskbroker connect login`"
    try:
        body = response.json()
    except ValueError:
        return f"the broker answered HTTP {response.status_code}"
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return f"the broker answered HTTP {response.status_code}"


class Broker:
    """An HTTP session with one broker, with the user's token when there is one."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._signed_in = token is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, f"/api/v1{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"the broker at {self.url} does not answer ({exc})") from exc

    def _json(self, response: httpx.Response, *ok: int) -> dict[str, Any]:
        if response.status_code not in (ok or (200,)):
            raise ClientError(problem(response, self._signed_in))
        try:
            body = response.json()
        except ValueError as exc:
            raise ClientError(f"{self.url} does not answer as a deskbroker broker") from exc
        if not isinstance(body, dict):
            raise ClientError(f"{self.url} does not answer as a deskbroker broker")
        return body

    def login(
        self, username: str, password: str, tenant: str | None, source: str | None
    ) -> dict[str, Any]:
        """The login's answer: a token and offers, or (202) a second-factor challenge."""
        body: dict[str, Any] = {"username": username, "password": password}
        if tenant:
            body["tenant"] = tenant
        if source:
            body["source"] = source
        return self._json(self._call("POST", "/auth/login", json=body), 200, 202)

    def login_code(self, challenge: str, code: str) -> dict[str, Any]:
        body = {"challenge": challenge, "code": code}
        return self._json(self._call("POST", "/auth/login/totp", json=body))

    def desktops(self) -> dict[str, Any]:
        return self._json(self._call("GET", "/client/desktops"))

    def connect(
        self, desktop_id: str, protocol: str | None, accepts: list[str]
    ) -> dict[str, Any] | Starting:
        body: dict[str, Any] = {"client": "native", "accepts": accepts}
        if protocol:
            body["protocol"] = protocol
        response = self._call("POST", f"/client/desktops/{desktop_id}/connect", json=body)
        answer = self._json(response, 200, 202)
        if response.status_code == 202:
            try:
                retry = float(response.headers.get("Retry-After") or answer["retry_after_s"])
            except (KeyError, ValueError):
                retry = 5.0
            return Starting(
                desktop_name=str(answer.get("desktop_name", desktop_id)),
                message=str(answer.get("message", "the desktop is starting")),
                estimate_s=int(answer.get("estimate_s") or 0),
                retry_after_s=max(1.0, retry),
            )
        return answer

    def release(self, desktop_id: str) -> None:
        response = self._call("POST", f"/client/desktops/{desktop_id}/release")
        if response.status_code != 204:
            raise ClientError(problem(response))

    def logout(self) -> None:
        response = self._call("POST", "/auth/logout")
        if response.status_code not in (204, 401):
            raise ClientError(problem(response))
