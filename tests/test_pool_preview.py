"""The pool preview takes what the saved pool takes, by the rules of real membership:
the desktops a pool built in a build center outside its ``center_ids`` included, and
provisioning counts over the same desktops as the engine's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from deskbroker.domain import provisioning
from deskbroker.domain.provisioning import Provisioning
from deskbroker.store import membership
from deskbroker.store.provisioning import pool_counts
from deskbroker.store.tables import Desktop, Pool
from tests.helpers import Api


def _member_names(api: Api, pool_id: str) -> list[str]:
    return sorted(m["name"] for m in api.get(f"pools/{pool_id}/members")["items"])


def test_the_preview_takes_the_desktops_a_pool_built_in_its_build_center(api: Api) -> None:
    ids = api.seed_pool(2)  # "lab" over lab-000, lab-001
    builds = api.post(
        "centers",
        {
            "name": "builds",
            "kind": "static",
            "params": {
                "machines": [
                    {"name": "built-1", "address": "127.0.2.1"},
                    {"name": "stray-1", "address": "127.0.2.2"},
                ]
            },
        },
    )
    # The pool builds in "builds", which is not one of its center_ids: there only the
    # desktop it built (carrying its mark) is its own.
    definition: dict[str, Any] = {
        "name": "lab",
        "center_ids": [ids["center"]],
        "provisioning": {
            "enabled": True,
            "center_id": builds["id"],
            "min_unassigned": 3,
            "max_total": 4,
        },
    }
    api.patch(f"pools/{ids['pool']}", definition)
    with api.ctx.db.write() as session:
        built = session.query(Desktop).filter_by(center_id=builds["id"], name="built-1").one()
        built.attributes = {"meta.deskbroker_pool": ids["pool"]}
        membership.refresh(session, built.tenant_id)
    taken = ["built-1", "lab-000", "lab-001"]
    assert _member_names(api, ids["pool"]) == taken

    seen = api.post("pools/preview", {"pool_id": ids["pool"], **definition}, status=200)
    assert sorted(d["name"] for d in seen["desktops"]) == taken
    assert (seen["total"], seen["free"]) == (3, 3)
    # 3 free of the 3 to keep: nothing to build, as the engine counts the saved pool.
    assert (seen["to_create"], seen["to_retire"]) == (0, 0)
    with api.ctx.db.read() as session:
        pool = session.get(Pool, ids["pool"])
        assert pool is not None
        counts = pool_counts(session, pool.id)
        limits = provisioning.targets(
            Provisioning.from_stored(pool.provisioning), datetime.now(UTC)
        )
    assert (counts.total, counts.unassigned) == (seen["total"], seen["free"])
    assert provisioning.to_create(limits, counts) == seen["to_create"]

    # Saved as previewed, the pool takes exactly what the preview said.
    api.patch(f"pools/{ids['pool']}", definition)
    assert _member_names(api, ids["pool"]) == taken

    # A new pool with the same definition has built nothing: the mark is another pool's.
    fresh = api.post("pools/preview", definition, status=200)
    assert sorted(d["name"] for d in fresh["desktops"]) == ["lab-000", "lab-001"]


def test_the_preview_counts_a_saved_pool_as_its_provisioner_does(api: Api) -> None:
    """Desktops being removed are not the pool's any more and one being built is about
    to be free: the preview of a saved pool's own definition builds exactly what the
    engine's next reconcile would."""
    ids = api.seed_pool(4)  # lab-000 .. lab-003, all free
    definition: dict[str, Any] = {
        "name": "lab",
        "center_ids": [ids["center"]],
        "provisioning": {
            "enabled": True,
            "center_id": ids["center"],
            "min_unassigned": 5,
            "max_total": 10,
        },
    }
    api.patch(f"pools/{ids['pool']}", definition)
    with api.ctx.db.write() as session:
        by_name = {d.name: d for d in session.query(Desktop).filter_by(center_id=ids["center"])}
        by_name["lab-000"].power_state = "deleting"
        by_name["lab-000"].availability = "unavailable"
        by_name["lab-001"].power_state = "building"

    seen = api.post("pools/preview", {"pool_id": ids["pool"], **definition}, status=200)
    assert sorted(d["name"] for d in seen["desktops"]) == ["lab-001", "lab-002", "lab-003"]
    # Two free now and one being built: 5 - 3 = 2 more (it said 3 when the desktop
    # being built did not count, and counted lab-000 in the total).
    assert (seen["total"], seen["free"], seen["to_create"]) == (3, 2, 2), seen
    with api.ctx.db.read() as session:
        counts = pool_counts(session, ids["pool"])
    limits = provisioning.targets(
        Provisioning.from_stored(definition["provisioning"]), datetime.now(UTC)
    )
    assert counts.total == seen["total"]
    assert provisioning.to_create(limits, counts) == seen["to_create"]
