"""The broker's shared collaborators, built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field

from deskbroker import outbound
from deskbroker.config import Settings
from deskbroker.security import PasswordHashing, SecretBox, TokenSigner
from deskbroker.services.agent_rate import AgentEventLimiter
from deskbroker.services.center_drivers import CenterDrivers
from deskbroker.services.config_cache import ConfigCache
from deskbroker.services.pulse import Pulse
from deskbroker.services.source_guard import SourceGuard
from deskbroker.services.user_rate import UserActivityLimiter
from deskbroker.store.db import Database


@dataclass
class BrokerContext:
    settings: Settings
    db: Database
    hashing: PasswordHashing
    signer: TokenSigner
    secrets: SecretBox
    cache: ConfigCache = field(default_factory=lambda: ConfigCache())
    pulse: Pulse = field(default_factory=Pulse)
    # Per-process bulkheads of the directories, shared by login and explain.
    sources: SourceGuard = field(init=False)
    # Every opened center driver of the process: one authentication per center.
    drivers: CenterDrivers = field(init=False)
    # Each desktop's agent events of the last minute, counted in this process.
    agent_events: AgentEventLimiter = field(default_factory=AgentEventLimiter)
    # Each account's sign-ins and each user's connects of the last minute, likewise.
    user_activity: UserActivityLimiter = field(default_factory=UserActivityLimiter)

    def __post_init__(self) -> None:
        self.sources = SourceGuard(self.settings)
        self.drivers = CenterDrivers(self.secrets)

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerContext:
        secret = settings.effective_secret_key
        # Drivers ask for the policy when they connect; the process's settings set it.
        outbound.install(settings.outbound_policy)
        return cls(
            settings=settings,
            db=Database(
                settings.effective_database_url,
                settings.db_pool_size,
                pgbouncer=settings.db_pgbouncer,
            ),
            hashing=PasswordHashing(
                settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
            ),
            signer=TokenSigner(secret, settings.token_ttl_s, settings.previous_secret_keys),
            secrets=SecretBox(secret, settings.previous_secret_keys),
        )
