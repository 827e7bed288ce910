"""/readyz tells an engine whose every worker has been busy for longer than the lease TTL
(each waiting on a cloud that does not answer), though its loop still ticks: nothing else
runs for any tenant meanwhile. Once the silent centers are removed, it is ready again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from deskbroker.api.app import create_app
from deskbroker.bootstrap import ensure_defaults
from deskbroker.config import Settings
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from tests.helpers import Api, wait_until
from tests.tarpit import silent_center, tarpit

LEASE_TTL_S = 3.0
CLOUD_TIMEOUT_S = 8.0
WORKERS = 2


@pytest.fixture
def watched(settings: Settings) -> Iterator[tuple[BrokerContext, TestClient, Engine]]:
    ctx = BrokerContext.from_settings(
        # One tenant's centers may take every worker here: the saturation is the subject
        # (a tenant's share is tried in test_center_turns).
        settings.model_copy(
            update={
                "engine_tick_s": 0.05,
                "lease_ttl_s": LEASE_TTL_S,
                "engine_tenant_workers": WORKERS,
            }
        )
    )
    ensure_defaults(ctx)
    engine = Engine(ctx, workers=WORKERS)
    engine.start()
    with TestClient(create_app(ctx)) as client:
        yield ctx, client, engine
    engine.stop()
    ctx.db.dispose()


def _until(what: str | Callable[[], str], check: Any, timeout_s: float) -> float:
    """How long ``check`` took to come true."""
    started = time.monotonic()
    wait_until(check, what, timeout_s=timeout_s)
    return time.monotonic() - started


def test_readyz_reports_every_engine_worker_busy_past_the_lease_ttl(
    watched: tuple[BrokerContext, TestClient, Engine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="deskbroker.engine")
    ctx, client, _ = watched
    _until("the engine's first tick", lambda: client.get("/readyz").status_code == 200, 10)
    api = Api.with_admin(client, ctx)
    with tarpit() as pit:
        silent = [
            silent_center(api, pit, name=f"silent-{n}", timeout_s=CLOUD_TIMEOUT_S)
            for n in range(WORKERS)
        ]
        answers: list[Any] = []
        saturation = f"every one of the {WORKERS} background engine workers"

        def saturated() -> bool:
            answers.append(client.get("/readyz"))
            return saturation in answers[-1].text

        def what() -> str:
            # A database stalled for seconds by the rest of a loaded machine also stops
            # the loop (rightly reported stuck meanwhile): the engine's log says where.
            seen = {a.text for a in answers if a.status_code != 200}
            return f"readyz to see the saturated engine; it said {seen}; log: {caplog.text}"

        # The scans of both centers take both workers; past the TTL readyz says so. The
        # calls time out at their deadline, and the jobs, due again, take both anew.
        took = _until(what, saturated, 3 * CLOUD_TIMEOUT_S)
        assert took >= LEASE_TTL_S - 0.5, took
        assert answers[-1].status_code == 503
        assert answers[-1].headers["Retry-After"]
        # The loop itself still ticks: the old check alone saw nothing wrong.
        assert ctx.pulse.stalled_for() is None
        # While the clouds stay silent their jobs come due again and take the workers anew
        # (rightly reported); once the operator removes the centers, the calls in flight
        # end at their deadline, the workers free up, and readyz is green.
        for center in silent:
            api.delete(f"centers/{center['id']}")
        _until("readyz to be ready again", lambda: client.get("/readyz").status_code == 200, 20)
