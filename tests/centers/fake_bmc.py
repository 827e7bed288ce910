"""A Redfish BMC for the tests (the outer boundary): one ComputerSystem whose power
state follows the resets it is asked, session or basic authentication, and a record of
every request. Served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SESSIONS = "/redfish/v1/SessionService/Sessions"
SYSTEM = "/redfish/v1/Systems/437XR1138R2"
RESET = f"{SYSTEM}/Actions/ComputerSystem.Reset"
_AFTER = {
    "On": "On",
    "ForceOn": "On",
    "GracefulShutdown": "Off",
    "ForceOff": "Off",
    "GracefulRestart": "On",
    "ForceRestart": "On",
    "PowerCycle": "On",
}


@dataclass
class FakeBMC:
    username: str = "operator"
    password: str = "bmc-secret-1"
    power_state: str = "Off"
    allowed: list[str] | None = None
    resets: list[str] = field(default_factory=list)
    requests: list[tuple[str, str, bool]] = field(default_factory=list)  # method, path, authed
    sessions: dict[str, str] = field(default_factory=dict)  # token -> session path
    deleted: list[str] = field(default_factory=list)
    latency_s: float = 0.0  # before each answer: a BMC that takes its time

    def start(self) -> FakeBMC:
        bmc = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _authed(self) -> bool:
                token = self.headers.get("X-Auth-Token")
                if token and token in bmc.sessions:
                    return True
                basic = self.headers.get("Authorization", "")
                expected = base64.b64encode(f"{bmc.username}:{bmc.password}".encode()).decode()
                return basic == f"Basic {expected}"

            def _send(self, status: int, body: Any = None, **headers: str) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                time.sleep(bmc.latency_s)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key.replace("_", "-"), value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def _refuse(self) -> None:
                self._send(401, {"error": {"code": "Base.1.0.NoValidSession", "message": "no"}})

            def do_POST(self) -> None:
                authed = self._authed()
                bmc.requests.append(("POST", self.path, authed))
                body = self._body()
                if self.path == SESSIONS:
                    if (body.get("UserName"), body.get("Password")) != (bmc.username, bmc.password):
                        return self._refuse()
                    token = secrets.token_hex(8)
                    path = f"{SESSIONS}/{len(bmc.sessions) + 1}"
                    bmc.sessions[token] = path
                    # An absolute Location naming another host: a client must use its path.
                    return self._send(
                        201,
                        {"@odata.id": path},
                        X_Auth_Token=token,
                        Location=f"http://elsewhere.invalid{path}",
                    )
                if not authed:
                    return self._refuse()
                if self.path == RESET:
                    kind = str(body.get("ResetType"))
                    if kind not in _AFTER or (bmc.allowed and kind not in bmc.allowed):
                        return self._send(400, {"error": {"message": f"bad {kind}"}})
                    bmc.resets.append(kind)
                    bmc.power_state = _AFTER[kind]
                    return self._send(204)
                return self._send(404, {"error": {"message": "not found"}})

            def do_GET(self) -> None:
                authed = self._authed()
                bmc.requests.append(("GET", self.path, authed))
                if not authed:
                    return self._refuse()
                if self.path == "/redfish/v1/Systems":
                    return self._send(200, {"Members": [{"@odata.id": SYSTEM}]})
                if self.path == SYSTEM:
                    action: dict[str, Any] = {"target": RESET}
                    if bmc.allowed is not None:
                        action["ResetType@Redfish.AllowableValues"] = bmc.allowed
                    return self._send(
                        200,
                        {
                            "@odata.id": SYSTEM,
                            "PowerState": bmc.power_state,
                            "Actions": {"#ComputerSystem.Reset": action},
                        },
                    )
                return self._send(404, {"error": {"message": "not found"}})

            def do_DELETE(self) -> None:
                authed = self._authed()
                bmc.requests.append(("DELETE", self.path, authed))
                token = self.headers.get("X-Auth-Token", "")
                if bmc.sessions.get(token) == self.path:
                    del bmc.sessions[token]
                    bmc.deleted.append(self.path)
                    return self._send(204)
                return self._refuse()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
