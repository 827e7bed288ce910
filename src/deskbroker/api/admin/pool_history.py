"""Pool history: the pool statistics the engine samples, read back for charts."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from deskbroker.api.admin.crud import scope
from deskbroker.api.deps import AdminReader, Ctx
from deskbroker.services import pool_history

MAX_HOURS = 24 * 90


class PoolPoint(BaseModel):
    at: datetime
    total: int = Field(description="desktops in the pool")
    unassigned: int = Field(description="desktops nobody holds")
    in_flight: int = Field(description="desktops being built")
    waiting_users: int = Field(description="users in the pool's queue")


class PoolHistoryOut(BaseModel):
    pool_id: str
    pool_name: str
    since: datetime
    points: list[PoolPoint]


def router() -> APIRouter:
    r = APIRouter()

    @r.get(
        "/pools/{pool_id}/history",
        tags=["pools"],
        summary="A pool's counts over time",
        description="The samples the engine takes of each pool (every `stats_interval_s`) "
        "over the last `hours`, oldest first; the newest `limit` when there are more. "
        "Samples older than `stats_retention_days` are gone.",
    )
    def get_pool_history(
        pool_id: str,
        ctx: Ctx,
        who: AdminReader,
        hours: int = Query(24, ge=1, le=MAX_HOURS, description="how far back"),
        limit: int = Query(
            500, ge=1, le=pool_history.MAX_SAMPLES, description="at most this many samples"
        ),
    ) -> PoolHistoryOut:
        found = pool_history.history(ctx, pool_id, scope(who), hours, limit)
        return PoolHistoryOut(
            pool_id=found.pool_id,
            pool_name=found.pool_name,
            since=found.since,
            points=[PoolPoint(**vars(p)) for p in found.points],
        )

    return r
