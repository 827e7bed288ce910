"""The broker's tables. Every tenant-owned row carries ``tenant_id``.

One module per concept; every name is re-exported here, so importers say
``from deskbroker.store.tables import X`` whatever module defines X. Importing this
package registers every table on ``Base.metadata`` (alembic's env relies on it).
"""

from deskbroker.store.tables.activity import (
    AgentAction,
    EnrolmentKey,
    Event,
    PendingEnrolment,
    QueueEntry,
    SessionRow,
)
from deskbroker.store.tables.base import (
    NAMING,
    Base,
    BrokerState,
    ConfigChange,
    Tenant,
    TenantGuard,
    UtcDateTime,
    new_id,
    utcnow,
)
from deskbroker.store.tables.engine import (
    BrokerNode,
    Job,
    ProvisioningTask,
    Timer,
)
from deskbroker.store.tables.identity import (
    ApiToken,
    AssignmentRuleRow,
    CustomRole,
    IdentitySource,
    LoginChallenge,
    LoginThrottle,
    OidcFlow,
    User,
)
from deskbroker.store.tables.inventory import (
    CLAIM_ORDER,
    FREE_DESKTOP,
    Center,
    Desktop,
    Image,
    Pool,
    PoolMember,
    PoolStat,
    UserVolume,
)
from deskbroker.store.tables.lifecycle import ForgottenDesktop
from deskbroker.store.tables.placement import CenterRoom
from deskbroker.store.tables.policies import (
    Policy,
    PolicyEntry,
    PowerPlan,
    ProtocolPlan,
    ReleasePlan,
)
from deskbroker.store.tables.rollouts import DesktopRebuild, PoolRollout, PoolUpkeep
from deskbroker.store.tables.webhooks import EventCursor, Webhook, WebhookDelivery

__all__ = [
    "CLAIM_ORDER",
    "FREE_DESKTOP",
    "NAMING",
    "AgentAction",
    "ApiToken",
    "AssignmentRuleRow",
    "Base",
    "BrokerNode",
    "BrokerState",
    "Center",
    "CenterRoom",
    "ConfigChange",
    "CustomRole",
    "Desktop",
    "DesktopRebuild",
    "EnrolmentKey",
    "Event",
    "EventCursor",
    "ForgottenDesktop",
    "IdentitySource",
    "Image",
    "Job",
    "LoginChallenge",
    "LoginThrottle",
    "OidcFlow",
    "PendingEnrolment",
    "Policy",
    "PolicyEntry",
    "Pool",
    "PoolMember",
    "PoolRollout",
    "PoolStat",
    "PoolUpkeep",
    "PowerPlan",
    "ProtocolPlan",
    "ProvisioningTask",
    "QueueEntry",
    "ReleasePlan",
    "SessionRow",
    "Tenant",
    "TenantGuard",
    "Timer",
    "User",
    "UserVolume",
    "UtcDateTime",
    "Webhook",
    "WebhookDelivery",
    "new_id",
    "utcnow",
]
