"""Broker configuration: ``DESKBROKER_*`` environment variables, a TOML/YAML-free
``deskbroker.env``-style file, and defaults that give the embedded SQLite broker."""

from __future__ import annotations

import os
import re
import secrets
import socket
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deskbroker import outbound

# A secret key shorter than this, or with fewer distinct characters, is refused: it
# signs every token and seals every stored secret.
SECRET_KEY_MIN_LENGTH = 32
SECRET_KEY_MIN_DISTINCT = 10


def check_secret_key(key: str, setting: str) -> None:
    """Refuse a signing key an attacker could guess or search."""
    if len(key) < SECRET_KEY_MIN_LENGTH or len(set(key)) < SECRET_KEY_MIN_DISTINCT:
        raise ValueError(
            f"{setting} is too weak: give at least {SECRET_KEY_MIN_LENGTH} random characters "
            f"with at least {SECRET_KEY_MIN_DISTINCT} different ones, e.g. the output of "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )


PORTAL_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$")


def portal_folder(path: str) -> str:
    """A folder of portal pages, as ``oidc_portal_paths`` names them; ValueError in words.

    The API is never one: a sign-in's answer handed to an API route (another source's
    ``/start``, say) would leave the portal."""
    segments = path.split("/")
    if (
        not PORTAL_PATH.match(path)
        or path.startswith("//")
        or not path.endswith("/")
        or any(s in (".", "..") for s in segments)
    ):
        raise ValueError(
            f"oidc_portal_paths: {path!r} is not a folder of pages on this broker such as "
            "/portal/ (a path that starts and ends with /, no . or .. segments)"
        )
    if path.lower() == "/" or path.lower().startswith("/api/"):
        raise ValueError(
            f"oidc_portal_paths: {path!r} would let a sign-in send the browser to the API; "
            "name the portal's own folder, such as /portal/"
        )
    return path


def _default_data_dir() -> Path:
    return Path(os.environ.get("DESKBROKER_DATA_DIR", Path.cwd() / ".deskbroker"))


class Settings(BaseSettings):
    """Everything an operator can set. Environment wins over the config file."""

    model_config = SettingsConfigDict(
        env_prefix="DESKBROKER_",
        env_file=os.environ.get("DESKBROKER_CONFIG", "deskbroker.conf"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str = ""
    secret_key: str = ""
    secret_key_previous: str = Field(
        default="",
        description="keys being rotated out, comma-separated: still accepted to verify tokens "
        "and open sealed secrets, never used to sign or seal",
    )
    # Names this broker's leases; must differ between brokers of a cluster.
    broker_id: str = Field(default_factory=socket.gethostname)
    host: str = "127.0.0.1"
    port: int = 8080
    token_ttl_s: int = Field(default=900, ge=30, le=86400)
    second_factor_challenge_ttl_s: int = Field(
        default=300,
        ge=1,
        le=3600,
        description="how long a password login waits for its one-time code",
    )
    argon2_time_cost: int = Field(default=2, ge=1, le=20)
    argon2_memory_kib: int = Field(default=19456, ge=8, le=1048576)
    argon2_parallelism: int = Field(default=1, ge=1, le=16)
    max_password_bytes: int = 1024
    login_max_failures_per_account: int = Field(
        default=5, ge=1, le=1000, description="failed sign-ins in a window that lock an account"
    )
    login_max_failures_per_address: int = Field(
        default=30, ge=1, le=100000, description="failed sign-ins in a window that block an address"
    )
    login_failure_window_s: int = Field(default=900, ge=10, le=86400)
    login_lockout_s: int = Field(
        default=900, ge=1, le=86400, description="first lockout; doubles on repeats, to 8x"
    )
    source_max_concurrent: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="calls one directory (LDAP, AD, NIS) may have in flight; more get 503",
    )
    source_queue_wait_s: float = Field(
        default=1.0,
        ge=0,
        le=30,
        description="how long a call finding a directory full waits for a slot while the "
        "directory is answering (a burst of sign-ins); one that has not answered lately is "
        "refused at once; 0: never wait",
    )
    tenant_max_concurrent: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="calls all the directories and identity providers of one tenant may "
        "have in flight together; more get 503",
    )
    source_call_deadline_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="the longest one call to a directory or identity provider may take as a "
        "whole (a server that drips its answer byte by byte is given up on after this)",
    )
    source_threads_max: int = Field(
        default=64,
        ge=1,
        le=10000,
        description="directory and identity provider calls in flight in one broker process, "
        "counting calls given up on that have not ended yet; more get 503",
    )
    source_breaker_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="timeouts or connection errors in a row that stop the broker asking a "
        "directory for a cool-down",
    )
    source_breaker_cooldown_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="how long a failing directory is not asked before one probe is let through",
    )
    db_retry_after_s: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="Retry-After of the 503 answered while the database cannot be reached",
    )
    api_token_max_days: int = Field(default=366, ge=1, le=3660)
    db_pool_size: int = 10
    db_pgbouncer: bool = Field(
        default=False,
        description="the database URL names a PgBouncer in transaction mode: no server-side "
        "prepared statements (a statement prepared on one server connection is unknown to "
        "the next transaction's)",
    )
    log_level: str = "info"
    engine: bool = Field(default=True, description="run background work in this broker")
    engine_tick_s: float = Field(default=0.5, gt=0, le=60)
    engine_workers: int = Field(default=24, ge=1, le=256)
    engine_center_workers: int = Field(
        default=2,
        ge=1,
        le=256,
        description="engine workers one center's work (scans, leak sweeps, builds, build "
        "steps) may hold at once; the rest waits its turn without holding a worker",
    )
    engine_tenant_workers: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="engine workers one tenant's centers may hold at once (default: all "
        "but a quarter of engine_workers, kept for the other tenants)",
    )
    lease_ttl_s: float = Field(default=60.0, ge=5, le=3600)
    # The cluster: each node's heartbeat, and when its silence makes it dead.
    heartbeat_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="how often a node writes its heartbeat"
    )
    node_dead_after_s: float = Field(
        default=5.0,
        ge=1,
        le=3600,
        description="a node silent this long is dead: another node reaps it and frees its "
        "leases, so its jobs, timers and builds are taken over at once",
    )
    # The HTTP side of a node.
    http_workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="HTTP worker processes behind the node's one socket (default: the "
        "number of cores up to 4 on PostgreSQL; SQLite allows 1)",
    )
    max_requests_in_flight: int = Field(
        default=256,
        ge=1,
        le=100000,
        description="requests one HTTP worker serves at once; more are answered 503 with "
        "Retry-After instead of queueing until their clients give up",
    )
    event_streams_per_tenant: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="event streams (GET /api/v1/admin/event-stream) one tenant may hold "
        "open at once per HTTP worker; more are answered 429",
    )
    event_streams: int = Field(
        default=64,
        ge=1,
        le=10000,
        description="event streams one HTTP worker holds open at once, all tenants "
        "together; streams do not count against max_requests_in_flight",
    )
    keep_alive_s: int = Field(
        default=75,
        gt=0,
        le=3600,
        description="how long an idle client connection stays open: longer than clients "
        "and load balancers keep theirs, so a client never reuses one the broker closed",
    )
    shutdown_grace_s: int = Field(
        default=20,
        ge=0,
        le=3600,
        description="how long a stopping node waits for the requests under way before it "
        "closes them (one stuck on a silent client or peer would otherwise hold it)",
    )
    provision_interval_s: float = Field(default=5.0, gt=0, le=3600)
    stats_interval_s: float = Field(default=300.0, gt=0, le=86400)
    provision_retry_base_s: float = Field(default=2.0, ge=0, le=600)
    provision_poll_s: float = Field(default=0.5, gt=0, le=60)
    quota_backoff_s: float = Field(default=30.0, ge=0, le=3600)
    event_retention_days: int = Field(default=30, ge=1, le=3650)
    stats_retention_days: int = Field(default=90, ge=1, le=3650)
    session_retention_days: int = Field(
        default=90, ge=1, le=3650, description="how long an ended session is kept"
    )
    # Events out (docs/events.md): webhook deliveries run on their own threads, so a
    # receiver that never answers holds at most these, never a request or the engine.
    webhook_workers: int = Field(
        default=4, ge=1, le=64, description="threads posting webhook deliveries, per node"
    )
    webhook_per_target: int = Field(
        default=2,
        ge=1,
        le=64,
        description="deliveries to one webhook in flight at once (in the whole cluster)",
    )
    webhook_per_tenant: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="deliveries of one tenant in flight at once (in the whole cluster); "
        "unset: half of webhook_workers, or webhook_per_target + 1 if more, leaving one "
        "thread to other tenants",
    )
    webhook_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="deadline of a whole delivery: connecting, sending and the answer",
    )
    webhook_retry_base_s: float = Field(
        default=5.0, ge=0, le=3600, description="wait after a first failed delivery; doubled"
    )
    webhook_retry_cap_s: float = Field(
        default=3600.0, ge=0, le=86400, description="the longest wait between two attempts"
    )
    webhook_poll_s: float = Field(
        default=1.0, gt=0, le=60, description="how often the event log is fanned out"
    )
    webhook_settle_s: float = Field(
        default=5.0,
        ge=0,
        le=600,
        description="how long a gap in event ids is waited for (a transaction committing "
        "late) before it is taken for a rolled-back one",
    )
    webhook_backlog: int = Field(
        default=10000,
        ge=100,
        le=1_000_000,
        description="pending deliveries one webhook may have; past it, its tenant's new "
        "events are not queued for it but counted in a webhook.events_dropped event",
    )
    webhook_retention_days: int = Field(
        default=30, ge=1, le=3650, description="how long a finished delivery is listed"
    )
    # Every event is fanned out into one delivery row per webhook that takes it: a tenant's
    # webhooks multiply its events, and the one fan-out serves every tenant.
    webhooks_per_tenant: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="webhooks one tenant may have; creating one more is refused (409)",
    )
    # As long as a session token lasts by default (token_ttl_s): a directory change reaches
    # a webhook no later than it reaches the token of the administrator who set it up.
    webhook_setter_check_s: float = Field(
        default=900.0,
        ge=10,
        le=86400,
        description="how often the directory users who set up webhooks are looked up in "
        "their directory again (their groups refreshed; gone ones' webhooks switched off)",
    )
    agent_token_ttl_s: int = Field(
        default=30 * 86400, ge=300, le=366 * 86400, description="lifetime of a desktop agent token"
    )
    # A real agent reports a handful of events per session (login, a few locks and
    # disconnects, logout); 60 leaves room for a burst of short sessions and still stops a
    # copied token from writing rows as fast as it can send.
    agent_events_per_minute: int = Field(
        default=60,
        ge=1,
        le=10_000,
        description="at most this many session events per desktop in a minute, counted "
        "by each broker process; more are refused with 429 before anything is written",
    )
    # A person signs in a few times a day and connects a few times a session; a
    # classroom's kiosks on one shared account sign in together at the hour. Past these
    # a script with someone's password is writing rows as fast as it can send.
    user_sign_ins_per_minute: int = Field(
        default=120,
        ge=1,
        le=100_000,
        description="at most this many complete sign-ins of one account (source and "
        "name) in a minute, counted by each broker process; more are refused with 429 "
        "before anything is written",
    )
    user_connects_per_minute: int = Field(
        default=120,
        ge=1,
        le=100_000,
        description="at most this many connects of one user in a minute, counted by "
        "each broker process; more are refused with 429 before anything is written",
    )
    agent_enrol_ttl_s: int = Field(
        default=3600,
        ge=60,
        le=30 * 86400,
        description="how long the enrolment secret of a desktop the engine builds stays valid",
    )
    agent_heartbeat_s: int = Field(
        default=60, ge=1, le=3600, description="how often agents are asked to beat"
    )
    agent_pending_enrol_ttl_s: int = Field(
        default=7 * 86400,
        ge=60,
        le=90 * 86400,
        description="how long an agent that enrolled with a tenant's enrolment key and "
        "matched no desktop waits for an administrator's approval (and, once approved, "
        "for its credential to be collected)",
    )
    agent_pending_enrol_max: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="at most this many enrolments wait for approval in one tenant: a "
        "leaked enrolment key cannot fill the table",
    )
    agent_lost_after_s: int = Field(
        default=300,
        ge=3,
        le=86400,
        description="an agent silent for this long (no heartbeat, no event) is `lost`",
    )
    rogue_users: Literal["record", "assign", "flag"] = Field(
        default="record",
        description="a user who logs into a desktop without the broker handing it to them: "
        "record (an event), assign (the desktop, when free, becomes theirs) or flag (an "
        "event, and the desktop leaves every offer until an administrator looks)",
    )
    agent_clock_window_s: int = Field(
        default=300,
        ge=10,
        le=86400,
        description="how far an agent event's `at` may be from the broker's clock",
    )
    start_estimate_s: int = Field(
        default=60, ge=1, le=3600, description="what a user is told a desktop start takes"
    )
    session_grant_s: int = Field(
        default=120,
        ge=1,
        le=3600,
        description="how long a connect counts as a session before the agent reports one",
    )
    outbound_deny: str = Field(
        default=outbound.DEFAULT_DENY,
        description="networks (CIDRs, comma-separated) the broker refuses to connect to on an "
        "administrator's configuration (centers, directories, OpenID providers)",
    )
    outbound_allow: str = Field(
        default="",
        description="networks allowed even inside a denied one; the most specific entry "
        "decides. The broker host's own addresses (but loopback) are denied always: only "
        "an entry of exactly one of them (10.0.0.5/32) opens it",
    )
    trusted_proxies: str = Field(
        default="",
        description="proxies (CIDRs, comma-separated) whose X-Forwarded-For names the client",
    )
    metrics_token: str = Field(
        default="",
        description="the bearer token GET /metrics asks for; unset, /metrics answers 404",
    )
    plan_max_attempts: int = Field(
        default=5, ge=1, le=100, description="tries of a failing plan action before giving up"
    )
    oidc_portal_paths: list[str] = Field(
        default_factory=lambda: ["/portal/"],
        min_length=1,
        max_length=20,
        description="where an OpenID Connect sign-in may send the browser back to: "
        "folders of portal pages on this broker (never under /api/)",
    )
    oidc_starts_per_address: int = Field(
        default=20,
        ge=1,
        le=100000,
        description="OpenID Connect sign-ins (portal or device) one client address may start "
        "in oidc_start_window_s",
    )
    oidc_start_window_s: int = Field(default=60, ge=1, le=3600)
    gateway_url: str = Field(
        default="",
        description="the gateway's base URL as browsers reach it (https://gw.example.com); "
        "empty: no gateway, every client connects directly and HTML5 desktops are off",
    )
    gateway_key: str = Field(
        default="",
        description="the secret shared with the gateway (its DESKBROKER_GATEWAY_KEY): signs "
        "tickets and checks the gateway's reports; never the same as secret_key",
    )
    gateway_id: str = Field(default="gateway", min_length=1, max_length=64)
    gateway_forward_host: str = Field(
        default="",
        description="the host native viewers reach the gateway's port forwards at; empty: "
        "the host of gateway_url",
    )
    gateway_direct_networks: str = Field(
        default="",
        description="client networks (CIDRs, comma-separated) inside the desktops' network: "
        "their native viewers connect directly, everyone else through the gateway",
    )
    gateway_bind_client: bool = Field(
        default=True,
        description="a port forward accepts only the client address the broker saw",
    )
    gateway_ssh_learn_host_keys: bool = Field(
        default=False,
        description="SSH in the browser to a desktop whose host key nobody gave: accept the "
        "key the gateway first sees and pin it (trust on first use); false: such a login is "
        "refused until an administrator sets the desktop's ssh_host_keys",
    )
    ticket_ttl_s: int = Field(
        default=60, ge=5, le=600, description="how long a gateway ticket may wait to be used"
    )

    @field_validator("oidc_portal_paths")
    @classmethod
    def _portal_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            portal_folder(path)
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("secret_key")
    @classmethod
    def _strong_key(cls, value: str) -> str:
        if value:
            check_secret_key(value, "DESKBROKER_SECRET_KEY")
        return value

    @field_validator("secret_key_previous")
    @classmethod
    def _strong_previous(cls, value: str) -> str:
        for key in (k.strip() for k in value.split(",")):
            if key:
                check_secret_key(key, "DESKBROKER_SECRET_KEY_PREVIOUS")
        return value

    @field_validator("gateway_key")
    @classmethod
    def _strong_gateway_key(cls, value: str) -> str:
        if value:
            check_secret_key(value, "DESKBROKER_GATEWAY_KEY")
        return value

    @field_validator("gateway_url")
    @classmethod
    def _gateway_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/?#\s]+/?$", value):
            raise ValueError(
                f"gateway_url: {value!r} is not a base URL such as https://gw.example.com"
            )
        return value.rstrip("/")

    @field_validator("metrics_token")
    @classmethod
    def _long_metrics_token(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("DESKBROKER_METRICS_TOKEN needs at least 16 characters")
        return value

    @field_validator(
        "outbound_deny", "outbound_allow", "trusted_proxies", "gateway_direct_networks"
    )
    @classmethod
    def _networks(cls, value: str, info: ValidationInfo) -> str:
        outbound.parse_networks(value, str(info.field_name))
        return value

    @property
    def outbound_policy(self) -> outbound.OutboundPolicy:
        """Where administrators' settings may make the broker connect.

        Computed on each use, never cached on the instance: ``model_copy`` copies what is
        cached, so a copy with another ``outbound_allow`` would enforce the old policy."""
        return outbound.OutboundPolicy.from_text(self.outbound_allow, self.outbound_deny)

    @cached_property
    def proxy_networks(self) -> tuple[outbound.Network, ...]:
        return outbound.parse_networks(self.trusted_proxies, "trusted_proxies")

    @cached_property
    def previous_secret_keys(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.secret_key_previous.split(",") if k.strip())

    @cached_property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to SQLite in the data directory."""
        if self.database_url:
            return self.database_url
        self.ensure_data_dir()
        return f"sqlite:///{self.data_dir / 'deskbroker.db'}"

    def ensure_data_dir(self) -> Path:
        """The data directory, created readable by the broker's user only (it holds the
        database and the secret key)."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask and ignored for an existing directory.
        if self.data_dir.stat().st_mode & 0o077:
            self.data_dir.chmod(0o700)
        return self.data_dir

    @cached_property
    def effective_secret_key(self) -> str:
        """The signing/encryption secret; generated once into the data dir if unset."""
        if self.secret_key:
            return self.secret_key
        path = self.ensure_data_dir() / "secret.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        key = path.read_text().strip()
        check_secret_key(key, str(path))
        return key
