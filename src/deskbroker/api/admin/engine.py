"""Admin views of background work: jobs and provisioning tasks, with their errors, and
the cluster's nodes that run it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import Field

from deskbroker.api.admin.crud import ResourceSpec, add_routes
from deskbroker.api.schemas import Out
from deskbroker.services import engine_catalog


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


class NodeOut(Out):
    id: str = Field(description="the node's lease owner: the leases it holds name it")
    broker_id: str
    host: str
    pid: int
    http_workers: int
    version: str
    started_at: datetime
    heartbeat_at: datetime = Field(
        description="its last heartbeat; a node silent for node_dead_after_s is reaped by "
        "another and its work taken over"
    )


SPECS: list[ResourceSpec[Any]] = [
    ResourceSpec(
        path="jobs",
        resource=engine_catalog.JOBS,
        read=JobOut,
        filters={"kind": str, "target_id": str},
    ),
    ResourceSpec(
        path="provisioning-tasks",
        resource=engine_catalog.PROVISIONING_TASKS,
        read=TaskOut,
        filters={"pool_id": str, "state": str, "center_id": str},
    ),
    ResourceSpec(
        path="nodes",
        resource=engine_catalog.NODES,
        read=NodeOut,
        filters={"broker_id": str},
    ),
]


def router() -> APIRouter:
    r = APIRouter()
    for spec in SPECS:
        add_routes(r, spec)
    return r
