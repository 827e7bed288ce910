"""A person at the provider's pages: httpx follows the redirects and fills in the forms
(login, consent, device code), the way a browser would submit them. Given the broker's
TestClient, the same browser (one cookie jar) also visits the broker's own pages."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx
from fastapi.testclient import TestClient

BROKER = "http://testserver"


class _ToBroker(httpx.BaseTransport):
    """Hands the browser's requests for the broker to the broker's app (its TestClient);
    the cookies stay the browser's."""

    def __init__(self, broker: TestClient) -> None:
        self.broker = broker

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.broker.send(request, follow_redirects=False)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    password: bool = False


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.text: list[str] = []
        self.inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
            self.inside = True
        elif tag == "input" and self.inside:
            # Buttons are left out: "Continue" sends no name, and the provider's
            # "Abort" button (outside the form, tied to it) must not be pressed.
            if a.get("type") == "password":
                self.forms[-1].password = True
            if a.get("name"):
                self.forms[-1].fields.setdefault(a["name"], a.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@dataclass
class Visit:
    """Where the browser ended: a redirect back to the broker, or a page with no form."""

    callback: str | None
    page: str


class Browser:
    """One browser with its own cookies; stops at any URL under ``stop_at``.

    ``history`` is every URL it asked for and every Location it was sent to."""

    def __init__(self, stop_at: str = f"{BROKER}/", broker: TestClient | None = None) -> None:
        mounts = {f"{BROKER}/": _ToBroker(broker)} if broker is not None else None
        self.http = httpx.Client(follow_redirects=False, timeout=10, mounts=mounts)
        self.stop_at = stop_at
        self.history: list[str] = []

    def close(self) -> None:
        self.http.close()

    def get(self, url: str) -> httpx.Response:
        self.history.append(url)
        response = self.http.get(url)
        if "location" in response.headers:
            self.history.append(response.headers["location"])
        return response

    def sign_in(self, url: str, username: str, password: str, *, consent: bool = True) -> Visit:
        response = self.get(url)
        for _ in range(20):
            if response.is_redirect:
                target = urljoin(str(response.url), response.headers["location"])
                if target.startswith(self.stop_at):
                    return Visit(target, "")
                response = self.get(target)
                continue
            parser = _Forms()
            parser.feed(response.text)
            if not parser.forms:
                return Visit(None, " ".join(" ".join(parser.text).split()))
            form = parser.forms[0]
            if form.fields.get("user_code") == "":
                # The provider asks for a code again: the device sign-in ended there.
                return Visit(None, " ".join(" ".join(parser.text).split()))
            if form.password:
                data = {"login": username, "password": password}
            elif len(parser.forms) > 1:  # consent: allow or deny
                form = next(
                    f
                    for f in parser.forms
                    if f.action.endswith("/confirm" if consent else "/abort")
                )
                data = form.fields
            else:  # the device code confirmation
                data = form.fields
            target = urljoin(str(response.url), form.action)
            self.history.append(target)
            response = self.http.request(form.method.upper(), target, data=data)
            if "location" in response.headers:
                self.history.append(response.headers["location"])
        raise AssertionError("the provider's pages did not end in 20 steps")
