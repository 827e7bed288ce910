"""Admin views of background work: jobs and provisioning tasks, with their errors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter

from deskbroker.api.admin.crud import ResourceSpec, add_routes
from deskbroker.api.schemas import Out
from deskbroker.store.tables import Job, ProvisioningTask


class JobOut(Out):
    id: str
    kind: str
    target_id: str
    interval_s: float
    next_run_at: datetime
    lease_owner: str | None
    failures: int
    last_error: str
    last_run_at: datetime | None
    last_ok_at: datetime | None
    runs: int


class TaskOut(Out):
    id: str
    tenant_id: str
    pool_id: str | None
    center_id: str
    desktop_id: str | None
    name: str
    state: str
    external_id: str | None
    attempts: int
    last_error: str
    next_step_at: datetime
    created_at: datetime
    updated_at: datetime


SPECS: list[ResourceSpec[Any]] = [
    ResourceSpec(
        path="jobs",
        label="job",
        model=Job,
        read=JobOut,
        filters={"kind": str, "target_id": str},
        global_only=True,
        affects_config=False,
    ),
    ResourceSpec(
        path="provisioning-tasks",
        label="provisioning task",
        model=ProvisioningTask,
        read=TaskOut,
        filters={"pool_id": str, "state": str, "center_id": str},
        affects_config=False,
    ),
]


def router() -> APIRouter:
    r = APIRouter()
    for spec in SPECS:
        add_routes(r, spec)
    return r
