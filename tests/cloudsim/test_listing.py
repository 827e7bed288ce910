"""Nova listings: paging, changes-since tombstones, tag and name filters, scale."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloudsim.server import CloudSim
from tests.cloudsim.conftest import POLL


def _pages(conn: Any, url: str, microversion: str = "2.96") -> list[list[dict[str, Any]]]:
    """Follow servers_links like a raw-JSON client does."""
    pages = []
    next_url: str | None = url
    while next_url:
        body = conn.compute.get(next_url, microversion=microversion).json()
        pages.append(body["servers"])
        links = body.get("servers_links") or []
        next_url = links[0]["href"].split("/v2.1", 1)[1] if links else None
    return pages


def test_raw_json_paging_2500_servers(sim: CloudSim, conn: Any) -> None:
    ids = sim.seed_servers(2500, project="demo", tags=["deskbroker"])
    pages = _pages(conn, "/servers/detail?limit=1000")
    assert [len(p) for p in pages] == [1000, 1000, 500]
    listed = [s["id"] for page in pages for s in page]
    assert len(set(listed)) == 2500
    assert listed == list(reversed(ids))  # newest first, as Nova's created_at desc
    # Without a limit the page is capped at 1000 and a next link is given.
    body = conn.compute.get("/servers/detail", microversion="2.96").json()
    assert len(body["servers"]) == 1000 and body["servers_links"][0]["rel"] == "next"
    small = _pages(conn, "/servers?limit=700")
    assert [len(p) for p in small] == [700, 700, 700, 400]
    assert set(small[0][0]) == {"id", "name", "links"}


def test_sdk_paging_follows_links(sim: CloudSim, conn: Any) -> None:
    sim.seed_servers(120, project="demo")
    mark = sim.last_request_seq
    servers = list(conn.compute.servers(details=True, limit=50))
    assert len(servers) == 120
    calls = [e for e in sim.requests(since=mark) if e["path"].endswith("/servers/detail")]
    # Two full pages with next links, a short page, then the probe openstacksdk always
    # makes after a link-less page when a limit was given (as against real Nova).
    assert len(calls) == 4
    assert "marker=" in calls[1]["query"] and "marker=" in calls[3]["query"]


def test_unknown_marker_is_400(conn: Any) -> None:
    resp = conn.compute.get("/servers/detail?marker=nope")
    assert resp.status_code == 400
    assert "marker [nope] not found" in resp.json()["badRequest"]["message"]


def test_changes_since_returns_deleted_tombstones(
    sim: CloudSim, conn: Any, boot: Callable[..., Any]
) -> None:
    keep = boot("keep")
    gone = boot("gone")
    since = datetime.now(UTC) - timedelta(seconds=1)
    conn.compute.delete_server(gone)
    conn.compute.wait_for_delete(gone, interval=POLL)
    changed = {s.id: s for s in conn.compute.servers(details=True, changes_since=since.isoformat())}
    assert changed[gone.id].status == "DELETED"
    assert changed[gone.id].vm_state == "deleted"
    assert changed[keep.id].status == "ACTIVE"
    plain = {s.id for s in conn.compute.servers(details=True)}
    assert plain == {keep.id}
    later = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    assert list(conn.compute.servers(details=True, changes_since=later)) == []


def test_changes_since_sees_status_changes(
    sim: CloudSim, conn: Any, boot: Callable[..., Any]
) -> None:
    first = boot("first")
    second = boot("second")
    since = datetime.now(UTC).isoformat()
    conn.compute.stop_server(second)
    conn.compute.wait_for_server(second, status="SHUTOFF", interval=POLL)
    body = conn.compute.get(f"/servers/detail?changes-since={since}").json()
    assert [s["id"] for s in body["servers"]] == [second.id]
    assert body["servers"][0]["status"] == "SHUTOFF"
    assert first.id not in body


def test_tag_filters(sim: CloudSim, conn: Any) -> None:
    both = sim.seed_servers(2, project="demo", tags=["deskbroker", "pool-a"], name_prefix="a")
    broker = sim.seed_servers(3, project="demo", tags=["deskbroker"], name_prefix="b")
    sim.seed_servers(4, project="demo", tags=["manual"], name_prefix="m")

    def ids(**query: Any) -> set[str]:
        return {s.id for s in conn.compute.servers(details=True, **query)}

    assert ids(tags="deskbroker") == set(both + broker)
    assert ids(tags="deskbroker,pool-a") == set(both)
    assert len(ids(**{"tags-any": "pool-a,manual"})) == 6
    raw = conn.compute.get("/servers/detail?not-tags=deskbroker", microversion="2.26").json()[
        "servers"
    ]
    assert len(raw) == 4
    raw = conn.compute.get(
        "/servers/detail?not-tags-any=pool-a,manual", microversion="2.26"
    ).json()["servers"]
    assert {s["id"] for s in raw} == set(broker)
    # Before 2.26 Nova does not know the filter and ignores it.
    raw = conn.compute.get("/servers/detail?tags=pool-a", microversion="2.25").json()
    assert len(raw["servers"]) == 9


def test_name_regex_and_status_filters(sim: CloudSim, conn: Any) -> None:
    sim.seed_servers(3, project="demo", name_prefix="desk")
    sim.seed_servers(2, project="demo", name_prefix="lab", status="SHUTOFF")
    assert len(list(conn.compute.servers(name="^desk-"))) == 3
    assert len(list(conn.compute.servers(name="00001"))) == 2
    assert len(list(conn.compute.servers(details=True, status="SHUTOFF"))) == 2
    names = [
        s["name"]
        for s in conn.compute.get("/servers/detail?sort_key=display_name&sort_dir=asc").json()[
            "servers"
        ]
    ]
    assert names == sorted(names)


def test_ten_thousand_servers_list_fast(sim: CloudSim, conn: Any) -> None:
    # CPU time, not wall time: on a loaded machine a thread waits for a core (and the GIL)
    # however little work it has, and that wait is not the simulator's cost. The seeding
    # runs in this thread (the simulator is in process); each request's CPU time is the
    # answering thread's, from the request log.
    started = time.thread_time()
    sim.seed_servers(10_000, project="demo", tags=["deskbroker"])
    seeded = time.thread_time() - started
    mark = sim.last_request_seq
    pages = _pages(conn, "/servers/detail?limit=1000&tags=deskbroker")
    assert sum(len(p) for p in pages) == 10_000
    served = [e for e in sim.requests(since=mark) if "/servers/detail" in e["path"]]
    assert len(served) == len(pages)
    sim_seconds = sum(e["cpu_ms"] for e in served) / 1000
    # Typical on an idle 2-core machine: seed 0.6 s, cold listing 0.3 s of CPU; 4.5 to
    # 4.8 s of seeding was seen on a slower machine running both legs of the suite. The
    # bound catches growth with the count (quadratic seeding takes minutes), not speed.
    assert seeded < 10, f"seeding 10k servers took {seeded:.2f} s of CPU"
    assert 0 < sim_seconds < 1.5, f"simulator spent {sim_seconds:.2f} s of CPU on 10k servers"
    mark = sim.last_request_seq
    _pages(conn, "/servers/detail?limit=1000&tags=deskbroker")
    warm = sum(e["cpu_ms"] for e in sim.requests(since=mark)) / 1000
    assert warm < 0.5, f"a warm listing of 10k servers took {warm:.2f} s of CPU"


@pytest.mark.parametrize("admin_query", ["all_tenants=1", "all_tenants=1&project_id={other}"])
def test_admin_all_tenants(sim: CloudSim, admin_query: str) -> None:
    from tests.cloudsim.conftest import make_connection

    admin = make_connection(sim, "admin", user="admin")
    sim.seed_servers(2, project="demo")
    sim.seed_servers(3, project="other")
    query = admin_query.format(other=sim.project_id("other"))
    body = admin.compute.get(f"/servers/detail?{query}").json()
    expected = 5 if "project_id" not in query else 3
    assert len(body["servers"]) == expected
