"""Background work as the admin API lists it: jobs, provisioning tasks and the nodes that
run them, read-only catalog resources (the engine and the nodes write them,
administrators read their state and errors)."""

from __future__ import annotations

from typing import Any

from deskbroker.services.catalog_crud import Resource
from deskbroker.store.tables import BrokerNode, Job, ProvisioningTask

JOBS: Resource[Any] = Resource(model=Job, label="job", global_only=True, affects_config=False)
PROVISIONING_TASKS: Resource[Any] = Resource(
    model=ProvisioningTask, label="provisioning task", affects_config=False
)
# The cluster's nodes, as their heartbeats keep them: for global administrators only.
NODES: Resource[Any] = Resource(
    model=BrokerNode, label="node", global_only=True, affects_config=False
)
