"""The configuration view's indexes, each answering what a walk of the whole site's
configuration answered.

Which power and release plan an agent event of a pool's desktop follows: the view's
index answers what a walk of every policy answered (an entry for the pool itself before
one naming it as backup, then policies by name, the first that names a plan), and a
new view, not the old one's index, answers after a change."""

from __future__ import annotations

from deskbroker.domain.offers import AssignmentKind, OfferOrdering
from deskbroker.services.config_cache import (
    ConfigView,
    EntryView,
    PolicyView,
    SourceView,
    merged,
)


def _entry(
    pool: str, *, backup: str | None = None, power: str | None = None, release: str | None = None
) -> EntryView:
    return EntryView(
        pool_id=pool,
        pool_name=pool,
        desktops=1,
        assignment=AssignmentKind.PERSISTENT,
        ordering=OfferOrdering.RUNNING_FIRST,
        backup_pool_id=backup,
        protocol_plan_id=None,
        power_plan_id=power,
        release_plan_id=release,
    )


def _view(version: int, *policies: PolicyView) -> ConfigView:
    return ConfigView(version=version, policies={p.id: p for p in policies})


def test_own_entry_before_backup_then_policy_names_each_plan_apart() -> None:
    view = _view(
        1,
        # "a" names the pool only as a backup: it loses to any entry for the pool itself.
        PolicyView("p1", "a", 1, (_entry("other", backup="pool", power="pw-backup"),), "t"),
        PolicyView("p2", "c", 1, (_entry("pool", power="pw-c", release="rl-c"),), "t"),
        # "b" sorts before "c" but names no power plan: "c"'s power plan is kept.
        PolicyView("p3", "b", 1, (_entry("pool", release="rl-b"),), "t"),
    )
    index = view.plans_by_pool()
    assert index["pool"] == ("pw-c", "rl-b")
    assert index["other"] == ("pw-backup", None)
    assert "nowhere" not in index


def test_a_backup_fills_what_no_own_entry_names() -> None:
    view = _view(
        1,
        PolicyView("p1", "z", 1, (_entry("other", backup="pool", release="rl-backup"),), "t"),
        PolicyView("p2", "a", 1, (_entry("pool", power="pw"),), "t"),
        # A pool named as its own backup counts once, as its own entry.
        PolicyView("p3", "m", 1, (_entry("self", backup="self", power="pw-self"),), "t"),
    )
    assert view.plans_by_pool()["pool"] == ("pw", "rl-backup")
    assert view.plans_by_pool()["self"] == ("pw-self", None)


def test_a_changed_tenant_gets_a_new_index() -> None:
    old = _view(1, PolicyView("p1", "a", 1, (_entry("pool", power="pw-old"),), "t1"))
    assert old.plans_by_pool()["pool"] == ("pw-old", None)
    part = _view(2, PolicyView("p1", "a", 1, (_entry("pool", release="rl-new"),), "t1"))
    new = merged(old, part, {"t1"})
    assert new.plans_by_pool()["pool"] == (None, "rl-new")
    assert old.plans_by_pool()["pool"] == ("pw-old", None)


def _source(source_id: str, tenant: str) -> SourceView:
    return SourceView(source_id, tenant, source_id, "local", "", {}, None, ())


def test_a_source_by_id_whatever_its_tenant_and_gone_after_a_change() -> None:
    old = ConfigView(
        version=1,
        sources_by_tenant={"t1": [_source("s1", "t1")], "t2": [_source("s2", "t2")]},
    )
    assert old.source("s2") == _source("s2", "t2")
    assert old.source("nope") is None
    # t2's source disabled (an enabled source only is in a view): the new view lacks it.
    new = merged(old, ConfigView(version=2), {"t2"})
    assert new.source("s2") is None
    assert new.source("s1") == _source("s1", "t1")


def test_the_offers_of_a_desktops_pools_are_what_a_walk_of_every_policy_finds() -> None:
    """A rogue login's limits come from the entries offering the desktop's pools, as
    their pool or as a backup; each entry once, whatever the number of its pools the
    desktop is in; no other tenant's policy looked at."""
    both = _entry("pool", backup="spare")
    view = _view(
        1,
        PolicyView("p1", "a", 2, (both, _entry("elsewhere")), "t1"),
        PolicyView("p2", "b", 1, (_entry("other", backup="pool"),), "t1"),
        PolicyView("p3", "c", 1, (_entry("theirs"),), "t2"),
    )
    walked = [
        (policy.id, entry.pool_id)
        for policy in view.policies.values()
        for entry in policy.entries
        if {entry.pool_id, entry.backup_pool_id} & {"pool", "spare"}
    ]
    found = view.offers_of(["spare", "pool"])
    assert sorted((p.id, e.pool_id) for p, e in found) == sorted(walked)
    assert [e for _, e in found].count(both) == 1
    assert view.offers_of(["nowhere"]) == []
    assert [p.id for p, _ in view.offers_of(["theirs"])] == ["p3"]
