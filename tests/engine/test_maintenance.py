"""Periodic upkeep: retention, pool statistics, leak sweeps, failing jobs made visible."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from cloudsim.server import CloudSim
from deskbroker.centers.base import CENTER_KEY
from deskbroker.centers.openstack.driver import OpenStackCenter
from deskbroker.domain.states import Availability
from deskbroker.engine import maintenance
from deskbroker.engine.provisioner import pool_counts
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store import events
from deskbroker.store.tables import (
    AgentAction,
    ApiToken,
    Center,
    Desktop,
    EnrolmentKey,
    Event,
    Job,
    LoginThrottle,
    PendingEnrolment,
    Pool,
    PoolMember,
    PoolStat,
    ProvisioningTask,
    SessionRow,
)
from tests.desktop_agent import Agent, assigned_desktop
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.helpers import Api


def _job(api: Api, kind: str) -> dict[str, object]:
    jobs = api.get(f"jobs?kind={kind}")["items"]
    assert len(jobs) == 1, jobs
    job: dict[str, object] = jobs[0]
    return job


def test_retention_drops_old_events_and_keeps_recent_ones(
    api: Api, ctx: BrokerContext, engine: Engine
) -> None:
    old = datetime.now(UTC) - timedelta(days=31)
    pool_id = api.seed_pool(1)["pool"]
    with ctx.db.write() as session:
        events.append(session, "old.thing", tenant_id=None, actor="test")
    with ctx.db.write() as session:  # written as the unit above committed: aged now
        session.execute(Event.__table__.update().where(Event.kind == "old.thing").values(at=old))
        session.add(PoolStat(pool_id=pool_id, at=old - timedelta(days=60), counts={}))
    engine.run_once()  # creates the jobs
    engine.run_once()
    with ctx.db.read() as session:
        kinds = set(session.scalars(select(Event.kind)).all())
        stats = session.scalar(select(func.count()).select_from(PoolStat))
    assert "old.thing" not in kinds and "login" in kinds
    assert stats == 1  # the old sample went; the fresh one taken this tick stays


def test_pool_statistics_are_sampled(api: Api, ctx: BrokerContext, engine: Engine) -> None:
    pool_id = api.seed_pool(3)["pool"]
    engine.run_once()
    engine.run_once()
    with ctx.db.read() as session:
        sample = session.scalars(select(PoolStat).where(PoolStat.pool_id == pool_id)).one()
    assert sample.counts["total"] == 3 and sample.counts["unassigned"] == 3
    assert _job(api, "pool_stats")["runs"] == 1


def test_a_pool_that_builds_unavailable_is_sampled_as_the_provisioner_counts_it(
    api: Api, ctx: BrokerContext, engine: Engine
) -> None:
    """A finished desktop waiting for an administrator to release it counts as unassigned
    in the samples, as it does for the provisioner (operators-guide: ``start_unavailable``)."""
    pool_id = api.seed_pool(3)["pool"]
    with ctx.db.write() as session:
        pool = session.get(Pool, pool_id)
        assert pool is not None
        pool.provisioning = {
            "enabled": True,
            "min_unassigned": 0,
            "max_total": 3,
            "parameters": {"start_unavailable": True},
        }
        waiting = session.scalars(
            select(Desktop)
            .join(PoolMember, PoolMember.desktop_id == Desktop.id)
            .where(PoolMember.pool_id == pool_id)
            .order_by(Desktop.name)
            .limit(2)
        ).all()
        for desktop in waiting:
            desktop.availability = Availability.UNAVAILABLE.value
    engine.run_once()
    engine.run_once()
    with ctx.db.read() as session:
        sample = session.scalars(select(PoolStat).where(PoolStat.pool_id == pool_id)).one()
        counted = pool_counts(session, pool_id, starts_unavailable=True)
    assert sample.counts["total"] == 3 and sample.counts["unassigned"] == 3
    assert counted.unassigned == 3
    # Without ``start_unavailable`` the two desktops out of service are not unassigned.
    with ctx.db.write() as session:
        pool = session.get(Pool, pool_id)
        assert pool is not None
        pool.provisioning = {**pool.provisioning, "parameters": {}}
    assert maintenance.pool_stats(ctx, engine.drivers, pool_id, datetime.now(UTC)) == "sampled"
    with ctx.db.read() as session:
        newest = session.scalars(
            select(PoolStat).where(PoolStat.pool_id == pool_id).order_by(PoolStat.id.desc())
        ).first()
    assert newest is not None and newest.counts["unassigned"] == 1


def test_leak_sweep_finds_and_reaps_untracked_instances(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    # An instance this center built for a desktop it no longer has (say a desktop row
    # deleted by hand): scans leave it alone, the sweep reports it.
    center = openstack_center(api, sim)
    [stray] = sim.seed_servers(
        1,
        tags=["deskbroker"],
        metadata={"deskbroker_desktop": "gone", CENTER_KEY: center["id"]},
    )
    assert api.get("desktops")["total"] == 0
    engine.run_once()
    engine.run_once()
    leak = api.get("events?kind=leak")["items"][0]
    assert leak["detail"]["instances"] == [stray] and leak["detail"]["removed"] is False

    params = api.get(f"centers/{center['id']}")["params"]
    api.patch(f"centers/{center['id']}", {"params": {**params, "reap_leaks": True}})
    with api.ctx.db.write() as session:
        session.execute(Job.__table__.update().values(next_run_at=datetime.now(UTC)))
    engine.run_once()
    assert any(e["detail"]["removed"] for e in api.get("events?kind=leak")["items"])
    gone = [s for s in sim.servers("demo") if s["id"] == stray]
    assert gone[0]["status"] == "DELETED" or gone[0]["task_state"] == "deleting"


def _live(sim: CloudSim) -> set[str]:
    return {
        str(s["id"])
        for s in sim.servers("demo")
        if s["status"] != "DELETED" and s["task_state"] != "deleting"
    }


def test_a_reaping_center_leaves_another_centers_desktops_on_the_same_project_alone(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    """Two centers on one cloud project share the broker tag; one reaps its leaks. It
    terminates only instances marked as built by itself, never the other's desktops nor
    an instance that names no center."""

    def center(name: str, **params: object) -> dict[str, Any]:
        made: dict[str, Any] = api.post(
            "centers",
            {
                "name": name,
                "kind": "openstack",
                "params": {
                    "auth_url": sim.auth_url,
                    "project_name": "demo",
                    "username": "demo",
                    "default_network": "private",
                    "retry_base_s": 0.01,
                    **params,
                },
                "secrets": {"password": "password"},
                "scan_interval_s": 5,
            },
        )
        return made

    reaper = center("reaper", reap_leaks=True)
    other = center("other")
    pool = provisioning_pool(api, other["id"], n=2, m=2)
    run_until(engine, lambda: api.get(f"pools/{pool['id']}/status")["counts"]["available"] == 2)
    others = {d["external_id"] for d in api.get(f"desktops?center_id={other['id']}")["items"]}
    assert len(others) == 2
    # Built for desktops no center has any more: one by the reaper, one unmarked (as
    # by a broker before centers marked their builds); scans import neither.
    [own_leak] = sim.seed_servers(
        1,
        name_prefix="own",
        tags=["deskbroker"],
        metadata={"deskbroker_desktop": "gone", CENTER_KEY: reaper["id"]},
    )
    [unmarked] = sim.seed_servers(
        1, name_prefix="unmarked", tags=["deskbroker"], metadata={"deskbroker_desktop": "gone"}
    )
    with api.ctx.db.write() as session:
        session.execute(Job.__table__.update().values(next_run_at=datetime.now(UTC)))
    engine.run_once()
    engine.run_once()
    reaped = [
        e["detail"]
        for e in api.get("events?kind=leak")["items"]
        if e["detail"]["center"] == "reaper"
    ]
    assert reaped and all(d["instances"] == [own_leak] and d["removed"] for d in reaped)
    live = _live(sim)
    assert own_leak not in live
    assert others | {unmarked} <= live
    assert api.get(f"pools/{pool['id']}/status")["counts"]["available"] == 2


def test_a_leak_the_cloud_will_not_remove_leaves_the_others_removed_and_is_named(
    api: Api, ctx: BrokerContext, sim: CloudSim, engine: Engine
) -> None:
    """A locked instance answers its delete with 409: the sweep removes the other leaks,
    records the event with the refusal, and tries again at its next run."""
    center = openstack_center(api, sim, reap_leaks=True)
    sim.seed_servers(
        3,
        tags=["deskbroker"],
        metadata={"deskbroker_desktop": "gone", CENTER_KEY: center["id"]},
    )
    with ctx.db.read() as session:
        row = session.get(Center, center["id"])
        assert row is not None
        session.expunge(row)
    driver = engine.drivers.get(row)
    assert isinstance(driver, OpenStackCenter)
    # The instance the sweep meets first (the listing's order is stable) is locked.
    order = [m.external_id for m in driver.leaked(set(), center_id=center["id"])]
    assert len(order) == 3
    locked, *others = order
    driver.session.compute_post(f"/servers/{locked}/action", {"lock": None})

    said = maintenance.leak_sweep(ctx, engine.drivers, center["id"], datetime.now(UTC))
    assert said == "3 leaked instance(s), 2 removed, 1 could not be removed"
    live = _live(sim)
    assert locked in live and not set(others) & live
    [leak] = api.get("events?kind=leak")["items"]
    assert sorted(leak["detail"]["instances"]) == sorted(order)
    assert leak["detail"]["removed"] is True
    [failure] = leak["detail"]["failed"]
    assert failure["instance"] == locked
    assert "locked" in failure["error"] and "password" not in failure["error"]

    driver.session.compute_post(f"/servers/{locked}/action", {"unlock": None})
    said = maintenance.leak_sweep(ctx, engine.drivers, center["id"], datetime.now(UTC))
    assert said == "1 leaked instance(s) removed"
    assert locked not in _live(sim)
    newest = api.get("events?kind=leak")["items"][0]["detail"]
    assert newest["instances"] == [locked] and newest["failed"] == []


def test_a_failing_job_is_retried_with_backoff_and_its_error_shown(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    openstack_center(api, sim)
    sim.inject_fault(500, times=None, path="/compute")
    engine.run_once()
    engine.run_once()
    job = _job(api, "leak_sweep")
    assert job["failures"] == 1 and "500" in str(job["last_error"])
    first_retry = datetime.fromisoformat(str(job["next_run_at"]))
    engine.run_once(datetime.now(UTC) + timedelta(seconds=3))
    job = _job(api, "leak_sweep")
    assert job["failures"] == 2
    assert datetime.fromisoformat(str(job["next_run_at"])) > first_retry
    sim.clear_faults()
    engine.run_once(datetime.now(UTC) + timedelta(seconds=30))
    job = _job(api, "leak_sweep")
    assert job["failures"] == 0 and job["last_error"] == ""


def test_pool_provisioning_job_exists_per_pool(api: Api, sim: CloudSim, engine: Engine) -> None:
    center = openstack_center(api, sim)
    provisioning_pool(api, center["id"], n=0, m=0)
    engine.run_once()
    kinds = {j["kind"] for j in api.get("jobs?limit=100")["items"]}
    assert {"scan_center", "leak_sweep", "pool_provision", "pool_stats", "retention"} <= kinds


def test_retention_drops_spent_sign_in_counts_and_keeps_live_ones(
    api: Api, ctx: BrokerContext, engine: Engine
) -> None:
    now = datetime.now(UTC)
    long_ago = now - timedelta(hours=2)
    with ctx.db.write() as session:
        session.add_all(
            [
                # A made-up name tried once, long ago: nothing to remember.
                LoginThrottle(key="account:t:ghost", failures=1, window_started_at=long_ago),
                # Locked and still locked: kept.
                LoginThrottle(
                    key="account:t:locked",
                    failures=0,
                    window_started_at=long_ago,
                    locked_until=now + timedelta(minutes=5),
                    lockouts=1,
                ),
                # Locked an hour ago: kept a day, so that a repeat lockout doubles.
                LoginThrottle(
                    key="address:10.9.9.9",
                    failures=0,
                    window_started_at=long_ago,
                    locked_until=now - timedelta(hours=1),
                    lockouts=1,
                ),
                # Counting right now: kept.
                LoginThrottle(key="account:t:fresh", failures=2, window_started_at=now),
            ]
        )
    engine.run_once()
    with ctx.db.read() as session:
        keys = set(session.scalars(select(LoginThrottle.key)).all())
    assert keys == {"account:t:locked", "address:10.9.9.9", "account:t:fresh"}
    assert _job(api, "retention")["runs"] == 1


def test_retention_drops_long_ended_sessions_and_keeps_open_ones(
    api: Api, ctx: BrokerContext, engine: Engine
) -> None:
    api.seed_pool(1, users=1)
    desktop = assigned_desktop(api, "user0")
    api.patch(f"desktops/{desktop}", {"max_sessions": 3})
    agent = Agent.mint(api, desktop)
    ended_long_ago = agent.send("login", session_key="old")["session_id"]
    agent.send("logout", session_key="old")
    ended_lately = agent.send("login", session_key="recent")["session_id"]
    agent.send("logout", session_key="recent")
    open_for_ages = agent.send("login", session_key="open")["session_id"]
    ages = {
        ended_long_ago: {"ended_at": datetime.now(UTC) - timedelta(days=91)},
        ended_lately: {"ended_at": datetime.now(UTC) - timedelta(days=89)},
        open_for_ages: {"started_at": datetime.now(UTC) - timedelta(days=400)},
    }
    with ctx.db.write() as session:
        for session_id, values in ages.items():
            session.execute(
                SessionRow.__table__.update().where(SessionRow.id == session_id).values(**values)
            )
    engine.run_once()  # creates the jobs
    engine.run_once()
    assert {s["id"] for s in api.get(f"sessions?desktop_id={desktop}")["items"]} == {
        ended_lately,
        open_for_ages,
    }
    assert _job(api, "retention")["runs"] >= 1


def test_retention_drops_old_agent_orders_expired_enrolments_and_dead_api_tokens(
    api: Api, ctx: BrokerContext, engine: Engine
) -> None:
    """Rows no other path removes: a helpdesk's order to an agent as long as the sessions
    it was for are kept, an agent's enrolment request once it expired, an API token a
    while after it expired or was revoked. Fresh ones stay."""
    now = datetime.now(UTC)
    ids = api.seed_pool(1)
    desktop = api.get(f"pools/{ids['pool']}/members")["items"][0]["id"]
    fresh = api.post(
        "api-tokens", {"name": "fresh", "scopes": ["pools:read"], "expires_in_days": 1}
    )
    dead = api.post("api-tokens", {"name": "dead", "scopes": ["pools:read"], "expires_in_days": 1})
    gone = api.post("api-tokens", {"name": "gone", "scopes": ["pools:read"], "expires_in_days": 1})
    with ctx.db.write() as session:
        tenant = session.get(Desktop, desktop).tenant_id  # type: ignore[union-attr]
        session.execute(
            ApiToken.__table__.update()
            .where(ApiToken.id == dead["id"])
            .values(expires_at=now - timedelta(days=31))
        )
        session.execute(
            ApiToken.__table__.update()
            .where(ApiToken.id == gone["id"])
            .values(revoked_at=now - timedelta(days=31))
        )
        key = EnrolmentKey(tenant_id=tenant, name="lab", key_hash="k" * 64)
        session.add(key)
        session.flush()
        session.add_all(
            [
                AgentAction(
                    tenant_id=tenant,
                    desktop_id=desktop,
                    kind="message",
                    message="old",
                    created_at=now - timedelta(days=91),
                ),
                AgentAction(tenant_id=tenant, desktop_id=desktop, kind="message", message="new"),
                PendingEnrolment(
                    tenant_id=tenant,
                    key_id=key.id,
                    poll_hash="a" * 64,
                    expires_at=now - timedelta(minutes=1),
                ),
                PendingEnrolment(
                    tenant_id=tenant,
                    key_id=key.id,
                    poll_hash="b" * 64,
                    expires_at=now + timedelta(days=1),
                ),
            ]
        )
    engine.run_once()
    with ctx.db.read() as session:
        messages = set(session.scalars(select(AgentAction.message)).all())
        polls = set(session.scalars(select(PendingEnrolment.poll_hash)).all())
        tokens = set(session.scalars(select(ApiToken.name)).all())
    assert messages == {"new"}
    assert polls == {"b" * 64}
    assert tokens == {"fresh"}, tokens
    assert fresh["name"] == "fresh"


def test_retention_drops_failed_builds_with_the_events_and_keeps_recent_ones(
    api: Api, ctx: BrokerContext, engine: Engine
) -> None:
    """A failed build's task is kept as long as the events that tell of it, and no
    longer: a pool failing for months does not keep a row per attempt for ever."""
    now = datetime.now(UTC)
    ids = api.seed_pool(1)
    old = now - timedelta(days=ctx.settings.event_retention_days + 1)
    with ctx.db.write() as session:
        pool = session.get(Pool, ids["pool"])
        assert pool is not None
        center_id = pool.center_ids[0]
        for name, state, at in (
            ("old-failed", "failed", old),
            ("new-failed", "failed", now - timedelta(days=1)),
            ("old-open", "requested", old),
        ):
            session.add(
                ProvisioningTask(
                    tenant_id=pool.tenant_id,
                    pool_id=pool.id,
                    center_id=center_id,
                    name=name,
                    state=state,
                    next_step_at=now + timedelta(days=1),
                    created_at=at,
                    updated_at=at,
                )
            )
    summary = maintenance.retention(ctx, engine.drivers, "", now)
    assert "1 failed builds" in summary, summary
    with ctx.db.read() as session:
        left = set(session.scalars(select(ProvisioningTask.name)).all())
    assert left == {"new-failed", "old-open"}
