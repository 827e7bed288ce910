"""Pools that provision themselves against cloudsim."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from cloudsim.server import CloudSim
from deskbroker.centers.openstack.driver import OpenStackCenter
from deskbroker.engine.builds import TaskStep
from deskbroker.engine.provisioner import reconcile_pool
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.services.inventory import scan_center
from deskbroker.store.tables import Desktop
from deskbroker.store.tasks import claim_builds
from tests.cloudsim.test_metadata import fetch
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.helpers import Api, wait_until


def _status(api: Api, pool_id: str) -> dict[str, int]:
    counts: dict[str, int] = api.get(f"pools/{pool_id}/status")["counts"]
    return counts


def _live(sim: CloudSim) -> list[dict[str, object]]:
    return [
        s for s in sim.servers("demo") if s["status"] != "DELETED" and s["task_state"] != "deleting"
    ]


def test_pool_converges_then_grows_in_one_batch(api: Api, sim: CloudSim, engine: Engine) -> None:
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=5, m=20)
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 5)
    assert len(_live(sim)) == 5
    names = sorted(d["name"] for d in api.get(f"pools/{pool['id']}/members")["items"])
    assert names == [f"vdi-{i:03d}" for i in range(1, 6)]

    posts_before = sim.request_count(method="POST", path="/servers")
    api.patch(
        f"pools/{pool['id']}",
        {"provisioning": {**api.get(f"pools/{pool['id']}")["provisioning"], "min_unassigned": 12}},
    )
    engine.run_once()  # one reconcile requests the whole deficit
    tasks = api.get(f"pools/{pool['id']}/status")["counts"]
    assert tasks["total"] == 12
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 12)
    assert sim.request_count(method="POST", path="/servers") - posts_before == 7
    assert len(_live(sim)) == 12


def test_pool_never_exceeds_max(api: Api, sim: CloudSim, engine: Engine) -> None:
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=4, m=4)
    policy = api.post("policies", {"name": "auto", "entries": [{"pool_id": pool["id"]}]})
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    for i in range(6):  # six users waiting are demand, but M still caps the pool
        api.post(
            "users",
            {"identity_source_id": api.source_id(), "username": f"w{i}", "password": "password-1"},
        )
        api.login(f"w{i}", "password-1")
    run_until(engine, lambda: api.get("assignments")["total"] == 4)
    for _ in range(5):
        engine.run_once()
    assert _status(api, pool["id"])["total"] == 4
    assert len(_live(sim)) == 4


def test_schedule_window_changes_targets(api: Api, sim: CloudSim, engine: Engine) -> None:
    center = openstack_center(api, sim)
    now = datetime.now(UTC)
    start = (now + timedelta(minutes=1)).strftime("%H:%M")
    end = (now + timedelta(minutes=3)).strftime("%H:%M")
    day = (now + timedelta(minutes=1)).weekday()
    pool = provisioning_pool(
        api,
        center["id"],
        n=2,
        m=10,
        schedules=[
            {"days": [day], "start": start, "end": end, "min_unassigned": 6, "max_total": 10}
        ],
    )
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 2)
    # At the window's start the targets change (the engine is told the time), and the
    # engine stays on that clock until the builds are done: a tick on the real clock,
    # still before the window, would be one in which the window has not opened.
    at_start = now.replace(second=0, microsecond=0) + timedelta(minutes=1, seconds=5)
    ahead = at_start - datetime.now(UTC)

    def window_clock() -> datetime:
        return datetime.now(UTC) + ahead

    engine.run_once(window_clock())
    run_until(
        engine,
        lambda: _status(api, pool["id"])["available"] == 6,
        clock=window_clock,
        what=lambda: (
            f"six available desktops at {window_clock():%H:%M:%S} in the window "
            f"{start}-{end}: {_status(api, pool['id'])}, "
            f"{api.get('pools/' + pool['id'])['status_message']!r}"
        ),
    )
    assert "schedule 1" in api.get(f"pools/{pool['id']}")["status_message"]


def _next(local_clock: time, zone: ZoneInfo, after: datetime) -> datetime:
    """The first moment after ``after`` when the clock in ``zone`` shows ``local_clock``."""
    local = after.astimezone(zone)
    candidate = datetime.combine(local.date(), local_clock, tzinfo=zone)
    if candidate <= local:
        candidate += timedelta(days=1)
    return candidate.astimezone(UTC)


def test_schedule_windows_are_read_in_the_pools_time_zone(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    center = openstack_center(api, sim)
    pool = provisioning_pool(
        api,
        center["id"],
        n=0,
        m=0,
        timezone="Asia/Tokyo",
        schedules=[
            {
                "days": list(range(7)),
                "start": "09:00",
                "end": "10:00",
                "min_unassigned": 0,
                "max_total": 0,
            }
        ],
    )
    engine.run_once()  # makes the pool's job and runs it once now
    # 18:30 in Tokyo is 09:30 UTC: a window read on the UTC clock would open here.
    evening = _next(time(18, 30), tokyo, datetime.now(UTC) + timedelta(minutes=1))
    assert evening.astimezone(UTC).time() == time(9, 30)
    engine.run_once(evening)
    assert "schedule" not in api.get(f"pools/{pool['id']}")["status_message"]
    morning = _next(time(9, 30), tokyo, evening)
    engine.run_once(morning)
    assert "(schedule 1 (09:00-10:00))" in api.get(f"pools/{pool['id']}")["status_message"]


def _reconcile_again(api: Api, engine: Engine, pool_id: str, times: int) -> None:
    """Let the pool's job come due ``times`` more times, each build it asks for finished."""
    for n in range(1, times + 1):
        engine.run_once(datetime.now(UTC) + timedelta(minutes=n))
        run_until(engine, lambda: _status(api, pool_id)["building"] == 0)


def test_a_pool_that_starts_desktops_unavailable_stops_at_its_target(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=2, m=10)
    provisioning = api.get(f"pools/{pool['id']}")["provisioning"]
    parameters = {**provisioning["parameters"], "start_unavailable": True}
    api.patch(f"pools/{pool['id']}", {"provisioning": {**provisioning, "parameters": parameters}})
    run_until(engine, lambda: _status(api, pool["id"])["running"] == 2)
    _reconcile_again(api, engine, pool["id"], times=4)
    counts = _status(api, pool["id"])
    assert (counts["total"], counts["unavailable"], counts["available"]) == (2, 2, 0)
    assert len(_live(sim)) == 2
    assert "2 free or building" in api.get(f"pools/{pool['id']}")["status_message"]
    # Once the administrator makes one available and a user takes it, one more is built.
    desktop = api.get(f"pools/{pool['id']}/members")["items"][0]
    api.patch(f"desktops/{desktop['id']}", {"availability": "available"})
    user = api.post(
        "users", {"identity_source_id": api.source_id(), "username": "u1", "password": "password-1"}
    )
    api.post(
        "assignments", {"desktop_id": desktop["id"], "user_id": user["id"], "pool_id": pool["id"]}
    )
    run_until(engine, lambda: _status(api, pool["id"])["running"] == 3)
    _reconcile_again(api, engine, pool["id"], times=3)
    assert _status(api, pool["id"])["total"] == 3


def test_scale_to_zero_retires_only_free_deletable_desktops(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=3, m=3)
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 3)
    user = api.post(
        "users", {"identity_source_id": api.source_id(), "username": "u1", "password": "password-1"}
    )
    desktop = api.get(f"pools/{pool['id']}/members")["items"][0]
    api.post(
        "assignments", {"desktop_id": desktop["id"], "user_id": user["id"], "pool_id": pool["id"]}
    )
    provisioning = api.get(f"pools/{pool['id']}")["provisioning"]
    api.patch(
        f"pools/{pool['id']}",
        {"provisioning": {**provisioning, "min_unassigned": 0, "max_total": 0}},
    )
    run_until(engine, lambda: _status(api, pool["id"])["total"] == 1)
    assert [s["id"] for s in _live(sim)] == [api.get(f"desktops/{desktop['id']}")["external_id"]]


def test_waiting_users_count_as_demand(api: Api, sim: CloudSim, engine: Engine) -> None:
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=0, m=5)
    policy = api.post("policies", {"name": "auto", "entries": [{"pool_id": pool["id"]}]})
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    api.post(
        "users",
        {"identity_source_id": api.source_id(), "username": "late", "password": "password-1"},
    )
    first = api.login("late", "password-1")
    assert first["offers"][0]["status"] == "queued"
    run_until(engine, lambda: api.get("assignments")["total"] == 1)
    again = api.login("late", "password-1")
    assert again["offers"][0]["status"] == "assigned"


def test_a_user_only_name_template_never_sends_an_empty_name(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=2, m=5)
    provisioning = api.get(f"pools/{pool['id']}")["provisioning"]
    parameters = {**provisioning["parameters"], "name_template": "{USER}"}
    api.patch(f"pools/{pool['id']}", {"provisioning": {**provisioning, "parameters": parameters}})
    # Built ahead of any user: no user to name them after, so the pool's default names.
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 2)
    assert sorted(str(s["name"]) for s in _live(sim)) == ["auto-001", "auto-002"]
    names = sorted(d["name"] for d in api.get(f"pools/{pool['id']}/members")["items"])
    assert names == ["auto-001", "auto-002"]
    # The cloud never saw a server without a name, not even a refused one.
    assert all(str(s["name"]).strip() for s in sim.servers("demo"))


def test_failed_builds_are_retried_then_quarantined(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    center = openstack_center(api, sim)
    sim.inject_fault("build_error", times=2)
    pool = provisioning_pool(api, center["id"], n=2, m=2)
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 2)
    assert len(_live(sim)) == 2
    sim.inject_fault("build_error", times=None)
    provisioning = api.get(f"pools/{pool['id']}")["provisioning"]
    api.patch(
        f"pools/{pool['id']}",
        {"provisioning": {**provisioning, "min_unassigned": 3, "max_total": 3}},
    )
    run_until(engine, lambda: api.get(f"pools/{pool['id']}")["status"] == "error", timeout_s=90)
    detail = api.get(f"pools/{pool['id']}")
    assert "failed 3 times" in detail["last_error"]
    failed = api.get("events?kind=provision.failed")["items"]
    assert failed and failed[0]["detail"]["attempts"] == 3
    assert len(_live(sim)) == 2  # every failed instance was cleaned up


def test_quota_becomes_a_pool_status_in_words(api: Api, sim: CloudSim, engine: Engine) -> None:
    center = openstack_center(api, sim)
    sim.set_quota("demo", instances=2)
    pool = provisioning_pool(api, center["id"], n=4, m=4)
    run_until(engine, lambda: api.get(f"pools/{pool['id']}")["status"] == "quota")
    assert api.get(f"pools/{pool['id']}")["last_error"] == "quota exceeded: instances 2 of 2"
    assert _status(api, pool["id"])["available"] <= 2
    sim.set_quota("demo", instances=10)
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 4, timeout_s=90)
    assert api.get(f"pools/{pool['id']}")["status"] == "ok"


def test_pools_converge_with_a_fifth_of_cloud_calls_failing(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    # A create answered 500 may have acted: its build waits the call's timeout_s for the
    # instance before trying again, so a short one keeps the test short.
    center = openstack_center(api, sim, timeout_s=3)
    sim.inject_fault(500, times=None, rate=0.2, path="/compute")
    sim.inject_fault("reset", times=None, rate=0.05, path="/compute")
    sim.inject_fault("build_error", times=None, rate=0.2)
    pool = provisioning_pool(api, center["id"], n=15, m=15)
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 15, timeout_s=120)
    assert len(_live(sim)) == 15, "every failed or duplicate instance was cleaned up"
    failures = sim.request_count(status=500)
    assert failures > 0
    # The errors were seen and reported: failed attempts carry their reasons.
    with_errors = [
        e
        for e in api.get("events?kind=provision.ready&limit=100")["items"]
        if e["detail"]["attempts"] > 1
    ]
    assert with_errors, "some builds needed more than one attempt"


def test_a_users_data_volume_follows_them_across_desktops(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=2, m=3)
    provisioning = api.get(f"pools/{pool['id']}")["provisioning"]
    provisioning["parameters"]["data_volume_gb"] = 2
    api.patch(f"pools/{pool['id']}", {"provisioning": provisioning})
    policy = api.post("policies", {"name": "auto", "entries": [{"pool_id": pool["id"]}]})
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    api.post(
        "users",
        {"identity_source_id": api.source_id(), "username": "roamer", "password": "password-1"},
    )
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 2)

    def attachments() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        conn = _driver(center["id"], api)
        for server in sim.servers("demo"):
            body = conn.session.compute_get(f"/servers/{server['id']}/os-volume_attachments")
            found[server["id"]] = [a["volumeId"] for a in body["volumeAttachments"]]
        return found

    first = api.login("roamer", "password-1")["offers"][0]["desktop"]
    first_server = api.get(f"desktops/{first['id']}")["external_id"]
    run_until(engine, lambda: attachments().get(first_server) != [])
    [volume] = attachments()[first_server]

    api.delete(f"assignments/{first['id']}")
    api.patch(f"desktops/{first['id']}", {"availability": "unavailable"})
    run_until(engine, lambda: attachments().get(first_server) == [])
    second = api.login("roamer", "password-1")["offers"][0]["desktop"]
    assert second["id"] != first["id"]
    second_server = api.get(f"desktops/{second['id']}")["external_id"]
    run_until(engine, lambda: attachments().get(second_server) == [volume])
    assert len(api.get("events?kind=volume.attach")["items"]) == 2


def _driver(center_id: str, api: Api) -> OpenStackCenter:
    from deskbroker.services.inventory import open_center
    from deskbroker.store.tables import Center

    with api.ctx.db.read() as session:
        center = session.get(Center, center_id)
        assert center is not None
        driver = open_center(api.ctx, center)
    assert isinstance(driver, OpenStackCenter)
    return driver


def test_pool_status_in_numbers_and_words(api: Api, sim: CloudSim, engine: Engine) -> None:
    center = openstack_center(api, sim)
    sim.inject_fault("build_error", times=None)
    pool = provisioning_pool(api, center["id"], n=1, m=1)
    run_until(engine, lambda: _status(api, pool["id"])["failed"] == 1, timeout_s=60)
    status = api.get(f"pools/{pool['id']}/status")
    for key in (
        "total",
        "available",
        "assigned",
        "provisioning",
        "failed",
        "running",
        "stopped",
        "suspended",
        "in_session",
        "queued",
    ):
        assert key in status["counts"]
    assert status["status"] == "error"
    assert (
        "1 failed builds" in status["summary"]
        and "1 build failed in a row, first: a build failed" in status["summary"]
    )


def test_user_data_gets_each_desktops_values(api: Api, sim: CloudSim, engine: Engine) -> None:
    center = openstack_center(api, sim)
    template = (
        "#cloud-config\nhostname: $DESKTOP_NAME\nruncmd: [[echo, '${POOL_ID}', $$HOME, $SHELL]]\n"
    )
    pool = api.post(
        "pools",
        {
            "name": "templated",
            "center_ids": [center["id"]],
            "provisioning": {
                "enabled": True,
                "min_unassigned": 1,
                "max_total": 1,
                "parameters": {
                    "name_template": "tpl-{SEQUENCE:2}",
                    "image": "cirros-0.6.2-x86_64-disk",
                    "flavor": "m1.tiny",
                    "user_data": template,
                },
            },
        },
    )
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 1)
    [server] = _live(sim)
    address = sim.server_address(server["id"])
    status, body = fetch(sim, "/openstack/latest/user_data", source=address)
    assert status == 200
    assert body.decode() == (
        f"#cloud-config\nhostname: tpl-01\nruncmd: [[echo, '{pool['id']}', $HOME, $SHELL]]\n"
    )


def test_a_floating_ip_pool_takes_the_driver_s_addressing_step(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    """The engine asks the driver whether a build needs an address step (the OpenStack
    driver: when the pool asked for a floating IP) and hands the desktop over with the
    address that step gave; a pool without one keeps the listing's address."""
    center = openstack_center(api, sim)
    pool = provisioning_pool(
        api,
        center["id"],
        n=2,
        m=2,
        parameters={
            "name_template": "fip-{SEQUENCE:3}",
            "image": "cirros-0.6.2-x86_64-disk",
            "flavor": "m1.tiny",
            "floating_ip": True,
        },
    )
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 2)
    members = api.get(f"pools/{pool['id']}/members")["items"]
    desktops = [api.get(f"desktops/{d['id']}") for d in members]
    floating = {s["floating_ip"] for s in _live(sim)}
    assert {d["address"] for d in desktops} == floating and len(floating) == 2
    assert all(str(address).startswith("127.200.") for address in floating)


def test_a_scan_before_the_handover_leaves_the_build_counted(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    """A scan that meets a build the cloud finished before the provisioner handed it
    over leaves its desktop ``building``: recorded ``running`` while still unavailable,
    it was neither free nor coming free, and the pool built a replacement for it (a
    window asking for 6 got 7 or 8)."""
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=1, m=3)
    assert reconcile_pool(ctx, engine.drivers, pool["id"], datetime.now(UTC)).endswith(
        "requested 1 more"
    )
    # The build is asked of the cloud and recorded, as the engine's refill does it...
    with ctx.db.connect_write() as conn:
        (row,) = claim_builds(
            conn,
            center["id"],
            limit=10,
            most=10,
            owner=engine.owner,
            now=datetime.now(UTC),
            ttl_s=60,
        )
    TaskStep(ctx, engine.drivers, row, engine.owner).build()
    # ... and the cloud finishes it before the provisioner hears of it.
    (server,) = _live(sim)
    wait_until(
        lambda: sim.servers("demo")[0]["status"] == "ACTIVE", "the build to finish in the cloud"
    )
    report = scan_center(ctx, center["id"], driver_of=engine.drivers.get)
    assert report is not None and report.status == "ok", report
    with ctx.db.read() as session:
        desktop = session.get(Desktop, row.desktop_id)
        assert desktop is not None
        assert (desktop.power_state, desktop.external_id) == ("building", server["id"])
    words = reconcile_pool(ctx, engine.drivers, pool["id"], datetime.now(UTC))
    assert "requested" not in words, words
    assert _status(api, pool["id"])["total"] == 1
    # The provisioner still hands the build over, and the pool holds the one desktop.
    run_until(engine, lambda: _status(api, pool["id"])["available"] == 1)
    assert _status(api, pool["id"])["total"] == 1
    assert len(_live(sim)) == 1
