"""The agent's main loop: enrol, watch the sources, queue and send events, beat, act."""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from deskbroker_agent import __version__
from deskbroker_agent.actions import Actions
from deskbroker_agent.broker import BrokerClient, Credential, Pending, Refused, Retry
from deskbroker_agent.config import AgentConfig, ConfigError, load
from deskbroker_agent.identity import Identity, discover
from deskbroker_agent.sources import EventSource, LogindSource, Seen, UtmpSource, XvncSource
from deskbroker_agent.spool import Spool, write_atomic
from deskbroker_agent.tracker import Tracker

log = logging.getLogger("deskbroker_agent")


class Agent:
    """One desktop's agent. ``run`` loops until ``stop`` is set."""

    def __init__(self, config: AgentConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        state = config.state_path
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.credential_path = state / "credential.json"
        # The poll handle of an enrolment the broker holds for an administrator.
        self.pending_path = state / "pending.json"
        # The hash of an enrolment token an administrator denied: not presented again
        # (each try would be a new request in the administrator's list) until it changes.
        self.denied_path = state / "denied"
        self.credential = Credential.load(self.credential_path)
        self.spool = Spool(state)
        self.tracker = Tracker(state / "sessions.json", config.idle_threshold_s)
        self.client = BrokerClient(config)
        self.identity = Identity()
        self.assigned_user = ""
        self.xvnc: XvncSource | None = None
        self.sources: list[EventSource] = self._sources()
        self.actions = Actions(state, self.xvnc)
        self.last_seen: dict[str, list[Seen]] = {}
        self.done: list[dict[str, Any]] = []
        self.next_beat = 0.0
        self.backoff = config.retry_s

    # -- set-up -----------------------------------------------------------------------
    def _sources(self) -> list[EventSource]:
        names = [n.strip() for n in self.config.sources.split(",") if n.strip()]
        if names == ["auto"]:
            names = ["logind" if LogindSource.available() else "utmp"]
            if self.config.x_display:
                names.append("xvnc")
        found: list[EventSource] = []
        for name in names:
            if name == "logind":
                found.append(LogindSource(self.config.idle_threshold_s))
            elif name == "utmp":
                found.append(UtmpSource())
            elif name == "xvnc":
                if not self.config.x_display or not self.config.xvnc_log:
                    raise ConfigError("the xvnc source needs x_display and xvnc_log")
                self.xvnc = XvncSource(
                    self.config.x_display, self.config.xvnc_log, self._session_user
                )
                # Carry on the numbering of the session this agent reported before a
                # restart, so that it is the same session and not a logout and a login.
                stem = self.xvnc.key.rsplit("-", 1)[0] + "-"
                for key in self.tracker.known:
                    if key.startswith(stem) and key[len(stem) :].isdigit():
                        self.xvnc.generation = max(self.xvnc.generation, int(key[len(stem) :]))
                found.append(self.xvnc)
            elif name != "none":
                raise ConfigError(f"unknown event source {name!r} (logind, utmp, xvnc, none)")
        return found

    def _session_user(self) -> str:
        # A new X session is the user the broker handed the desktop to: ask it now rather
        # than trust a heartbeat's answer from before the user's login.
        if self.config.x_user:
            return self.config.x_user
        # The session this agent reported before it restarted (the X server and its
        # viewers outlived it): the same user, not whoever the broker says holds the
        # desktop now, nor the X server's owner when the broker cannot be asked.
        known = self.tracker.known.get(self.xvnc.key) if self.xvnc is not None else None
        if known is not None:
            return known.user
        if self.credential is not None:
            try:
                self.heartbeat()
            except (Retry, Refused) as exc:
                log.info("could not ask the broker who holds the desktop: %s", exc)
        return self.assigned_user

    def enrol(self) -> bool:
        """Enrol once (a credential on disk means it is done); False to try again later."""
        if self.credential is not None:
            return True
        secret = self.config.enrolment_token or self.identity.enrol_secret
        if not secret:
            log.error(
                "no enrolment token: set enrolment_token, or build the desktop with the "
                "broker (it puts a secret in the instance metadata)"
            )
            return False
        token_hash = hashlib.sha256(secret.encode()).hexdigest()
        try:
            denied = self.denied_path.read_text().strip() == token_hash
        except FileNotFoundError:
            denied = False
        if denied:
            log.error(
                "an administrator denied this machine's enrolment with this token; set "
                "another enrolment_token (or remove %s) to ask again",
                self.denied_path,
            )
            return False
        pending = Pending.load(self.pending_path)
        try:
            if pending is not None:
                got = self.client.poll(pending.poll_handle)
            else:
                got = self.client.enrol(secret, self.identity)
        except Refused as exc:
            if pending is not None:
                # Denied, expired or unknown: this handle is done. Expired or unknown: the
                # next try enrols afresh (after the back-off); denied: not with this token.
                self.pending_path.unlink(missing_ok=True)
                if exc.status == 403:
                    write_atomic(self.denied_path, token_hash.encode())
            log.error("enrolment refused: %s", exc.detail)
            return False
        except Retry as exc:
            log.warning("broker unreachable for enrolment: %s", exc)
            return False
        if isinstance(got, Pending):
            if pending is None:
                got.save(self.pending_path)
                log.warning("enrolment held by the broker: %s", got.detail)
            return False
        self.credential = got
        self.credential.save(self.credential_path)
        self.pending_path.unlink(missing_ok=True)
        self.spool.reset()
        log.info("enrolled as desktop %s", self.credential.desktop_name)
        return True

    # -- broker calls -----------------------------------------------------------------
    def _authorised(self, path: str, body: dict[str, Any]) -> Any:
        assert self.credential is not None
        try:
            return self.client.call(path, body, self.credential.token)
        except Refused as exc:
            if exc.status != 401:
                raise
        # Expired, or revoked when the desktop changed hands: the refresh secret, which
        # only root on this machine can read, gets a new token.
        log.info("agent token refused; refreshing it")
        try:
            self.credential = self.client.refresh(self.credential)
        except Refused as exc:
            # Not an event's fault: keep the queue and wait for an administrator.
            raise Retry(f"the broker refused this desktop's refresh secret: {exc.detail}") from exc
        self.credential.save(self.credential_path)
        return self.client.call(path, body, self.credential.token)

    def heartbeat(self) -> None:
        body = {
            "identity": self.identity.as_report(),
            "queued": len(self.spool),
            "done": self.done,
            "agent_version": __version__,
        }
        answer = self._authorised("/heartbeat", body)
        self.done = []
        assert self.credential is not None
        if answer.get("token"):
            self.credential.token = answer["token"]
            self.credential.expires_at = int(answer["expires_at"])
            self.credential.save(self.credential_path)
        self.assigned_user = answer.get("assigned_user") or ""
        for action in answer.get("actions") or []:
            result = self.actions.run(action)
            log.info("action %s %s: %s", action.get("kind"), action.get("id"), result.detail)
            self.done.append({"id": action.get("id"), "ok": result.ok, "detail": result.detail})
            if action.get("kind") == "logoff" and result.ok:
                ended = self.tracker.forget(str(action.get("session_key") or ""))
                if ended is not None:
                    self.spool.put(ended)

    def flush(self) -> None:
        """Send queued events in order; stop at the first one the broker did not answer."""
        for path, entry in self.spool.pending():
            try:
                self._authorised("/events", entry)
            except Refused as exc:
                # The broker will never take it (malformed, cannot follow): sending it
                # again would block every later event. Dropped with its reason.
                log.warning("event %s %s refused: %s", entry["seq"], entry["event"], exc.detail)
            self.spool.done(path)

    # -- the loop -----------------------------------------------------------------------
    def observe(self) -> None:
        seen: list[Seen] = []
        for source in self.sources:
            now = source.sessions()
            if now is None:
                now = self.last_seen.get(source.name, [])
            self.last_seen[source.name] = now
            seen.extend(now)
        for event in self.tracker.update(seen):
            self.spool.put(event)

    def step(self) -> None:
        """One round: look, then talk to the broker if it is time or there is news."""
        self.observe()
        if self.credential is None and not self.enrol():
            raise Retry("not enrolled yet")
        if time.monotonic() >= self.next_beat:
            self.heartbeat()
            spread = self.config.heartbeat_jitter
            self.next_beat = time.monotonic() + self.config.heartbeat_s * random.uniform(
                1 - spread, 1 + spread
            )
        self.flush()

    def run(self) -> None:
        self.identity = discover(self.config.metadata_url, self.config.source_address)
        log.info(
            "deskbroker-agent %s: instance %s (%s), addresses %s",
            __version__,
            self.identity.instance_id or "-",
            self.identity.source,
            ", ".join(self.identity.addresses) or "-",
        )
        while not self.stop.is_set():
            try:
                self.step()
                self.backoff = self.config.retry_s
                wait = self.config.poll_s
            except (Retry, Refused) as exc:
                log.warning("broker: %s (queued events: %d)", exc, len(self.spool))
                wait = self.backoff
                self.backoff = min(self.backoff * 2, self.config.retry_max_s)
                self.next_beat = 0.0
            self.stop.wait(wait)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deskbroker-agent", description="Report this desktop's sessions to deskbroker."
    )
    parser.add_argument("--config", type=Path, help="INI file (default /etc/deskbroker-agent.conf)")
    parser.add_argument("--version", action="version", version=__version__)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        config = load(args.config)
        agent = Agent(config)
    except ConfigError as exc:
        print(f"deskbroker-agent: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop.set())
    agent.run()
    return 0


def cli() -> None:
    """The zipapp's and the systemd unit's entry point: exits with ``main``'s status."""
    raise SystemExit(main())
