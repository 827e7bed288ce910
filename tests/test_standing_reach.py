"""The stronger-account rule where a tenant administrator would reach a global
administrator's desktop sideways: through an agent's rogue login, through the
``meta.deskbroker_pool`` mark, through a desktop's own edit or drain, and through a
center a pool names desktop by desktop."""

from __future__ import annotations

from typing import Any

from deskbroker.bootstrap import add_local_user
from deskbroker.domain.membership import DesktopFacts, PoolDefinition, members
from deskbroker.store import membership
from deskbroker.store.tables import Desktop
from tests.desktop_agent import Agent, events_of
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api


def _tenant_admin(api: Api) -> Api:
    """A tenant admin of the tenant that holds the global admin (the default tenant)."""
    add_local_user(api.ctx, "tad", USER_PASSWORD, role="tenant_admin")
    return Api(api.client, api.ctx, api.login("tad")["token"])


def _static(api: Api, name: str, address: str, **extra: Any) -> tuple[str, str]:
    """A static center of one machine: (center id, desktop id)."""
    center = api.post(
        "centers",
        {
            "name": name,
            "kind": "static",
            "params": {"machines": [{"name": f"{name}-1", "address": address, **extra}]},
        },
    )
    [desktop] = api.get(f"desktops?center_id={center['id']}")["items"]
    return center["id"], desktop["id"]


def _member_names(api: Api, pool_id: str) -> set[str]:
    return {m["name"] for m in api.get(f"pools/{pool_id}/members")["items"]}


def test_a_rogue_login_never_hands_an_administrator_a_desktop(api: Api) -> None:
    """The agent token is any tenant administrator's to mint, so its report of a login
    assigns only plain users; the refusal is kept in the event, with its reason."""
    tad = _tenant_admin(api)
    add_local_user(api.ctx, "plain", USER_PASSWORD)
    users = {u["username"]: u["id"] for u in api.get("users")["items"]}
    center, desktop = _static(tad, "evil", "198.51.100.66")
    _, other = _static(tad, "fair", "198.51.100.67")
    pool = tad.post("pools", {"name": "evil-pool", "center_ids": [center]})
    fair = tad.post("pools", {"name": "fair-pool", "desktop_ids": [other]})
    for p in (pool, fair):
        entry = {"pool_id": p["id"], "rogue_users": "assign"}
        tad.post("policies", {"name": f"{p['name']}-pol", "entries": [entry]})
    # The direct way is refused, and so is the agent's.
    tad.post("assignments", {"desktop_id": desktop, "user_id": users["admin"]}, status=403)
    Agent.mint(tad, desktop).send("login", user="admin", seq=1)
    [rogue] = events_of(api, desktop, "session.rogue")
    assert rogue["detail"]["outcome"] == "refused"
    assert "admin can be global_admin" in rogue["detail"]["refused"]
    assert tad.get(f"desktops/{desktop}")["assigned_user_id"] is None
    assert api.get(f"assignments?user_id={users['admin']}")["items"] == []
    # A plain user still gets the desktop their rogue login was on.
    Agent.mint(tad, other).send("login", user="plain", seq=1)
    [rogue] = events_of(api, other, "session.rogue")
    assert rogue["detail"]["outcome"] == "assigned"
    assert tad.get(f"desktops/{other}")["assigned_user_id"] == users["plain"]


def test_the_engines_pool_mark_is_not_administrator_input(api: Api) -> None:
    ids = api.seed_pool(1)  # the global admin's rule hands out "lab"
    tad = _tenant_admin(api)
    mark = {"meta.deskbroker_pool": ids["pool"]}
    refused = tad.post(
        "centers",
        {
            "name": "evil",
            "kind": "static",
            "params": {
                "machines": [{"name": "evil-1", "address": "198.51.100.66", "attributes": mark}]
            },
        },
        status=422,
    )
    assert "meta.deskbroker_" in refused["detail"]
    _, spare = _static(api, "spare", "198.51.100.77")
    refused = tad.patch(f"desktops/{spare}", {"attributes": mark}, status=422)
    assert "cannot be set by an administrator" in refused["detail"]
    assert _member_names(api, ids["pool"]) == {"lab-000"}


def test_a_desktop_edit_keeps_the_engines_mark_as_it_is(api: Api) -> None:
    """A mark the engine wrote may be sent back unchanged, or left out: it is kept."""
    ids = api.seed_pool(1)
    [lab] = api.get(f"desktops?center_id={ids['center']}")["items"]
    with api.ctx.db.write() as session:
        session.get(Desktop, lab["id"]).attributes = {"meta.deskbroker_pool": ids["pool"]}
    kept = api.patch(f"desktops/{lab['id']}", {"attributes": {"rack": "b2"}})
    assert kept["attributes"] == {"rack": "b2", "meta.deskbroker_pool": ids["pool"]}
    again = api.patch(
        f"desktops/{lab['id']}", {"attributes": {"meta.deskbroker_pool": ids["pool"]}}
    )
    assert again["attributes"] == {"meta.deskbroker_pool": ids["pool"]}
    moved = api.patch(f"desktops/{lab['id']}", {"attributes": {"meta.deskbroker_pool": "x"}}, 422)
    assert "meta.deskbroker_pool" in moved["detail"]


def test_a_mark_from_a_center_the_pool_does_not_use_joins_nothing(api: Api) -> None:
    """A cloud's metadata can carry the mark too: it counts only in a center the pool
    takes desktops from or builds in."""
    ids = api.seed_pool(1)
    _, stray = _static(api, "stray", "198.51.100.88")
    with api.ctx.db.write() as session:
        row = session.get(Desktop, stray)
        row.attributes = {"meta.deskbroker_pool": ids["pool"]}
        membership.refresh(session, row.tenant_id)
    assert _member_names(api, ids["pool"]) == {"lab-000"}
    pool = PoolDefinition("p", filters=(), desktop_ids=frozenset({"none"}))
    built = PoolDefinition("p", build_center_ids=frozenset({"c1"}), desktop_ids=pool.desktop_ids)
    marked = [
        DesktopFacts("in-c1", "c1", {"meta.deskbroker_pool": "p"}),
        DesktopFacts("in-c2", "c2", {"meta.deskbroker_pool": "p"}),
    ]
    assert members([pool], marked) == {"p": set()}
    assert members([built], marked) == {"p": {"in-c1"}}


def test_a_stronger_accounts_desktop_cannot_be_edited_or_drained(api: Api) -> None:
    ids = api.seed_pool(2)
    login = api.login("admin", ADMIN_PASSWORD)
    held = login["offers"][0]["desktop"]["id"]
    tad = _tenant_admin(api)
    for body in ({"attributes": {"ports": {"rdp": 3390}}}, {"availability": "unavailable"}):
        refused = tad.patch(f"desktops/{held}", body, status=403)
        assert "admin, whose role is global_admin, holds it" in refused["detail"]
    tad.post(f"desktops/{held}/drain", {"message": ""}, status=403)
    # Nor speak for its sessions through its agent (nor cut its agent off).
    refused = tad.post(f"desktops/{held}/agent-token", {}, status=403)
    assert refused["detail"].startswith("only a global administrator can mint the agent token")
    tad.post(f"desktops/{held}/enrolment-secret", {}, status=403)
    # The pool's free desktop is offered to the global admin: out of reach too.
    lab = api.get(f"desktops?center_id={ids['center']}")["items"]
    [free] = [d["id"] for d in lab if d["id"] != held]
    refused = tad.post(f"desktops/{free}/drain", {"message": ""}, status=403)
    assert "admin, whose role is global_admin, gets desktops through it" in refused["detail"]
    # A global administrator may.
    api.post(f"desktops/{free}/drain", {"message": ""}, status=200)


def test_a_desktop_edit_cannot_join_a_stronger_accounts_pool_by_its_filters(api: Api) -> None:
    center, _ = _static(api, "gold", "192.0.2.10", attributes={"tier": "gold"})
    _, plain = _static(api, "plain", "192.0.2.11")
    pool = api.post(
        "pools",
        {"name": "gold", "filters": [{"attribute": "tier", "op": "equals", "value": "gold"}]},
    )
    policy = api.post("policies", {"name": "gold", "entries": [{"pool_id": pool["id"]}]})
    api.post(
        "assignment-rules",
        {"identity_source_id": api.source_id(), "name": "all", "policy_id": policy["id"]},
    )
    tad = _tenant_admin(api)
    # A desktop of a center the global admin set up would join: refused.
    refused = tad.patch(f"desktops/{plain}", {"attributes": {"tier": "gold"}}, status=403)
    assert "admin, whose role is global_admin, gets desktops through it" in refused["detail"]
    # One of the tenant admin's own center, or a new center's machine, may match the
    # filters: the pool takes no desktop of a center no global admin vouches for.
    _, mine = _static(tad, "mine", "198.51.100.66")
    tad.patch(f"desktops/{mine}", {"attributes": {"tier": "gold"}})
    machine = {"name": "evil-1", "address": "198.51.100.67", "attributes": {"tier": "gold"}}
    tad.post("centers", {"name": "evil", "kind": "static", "params": {"machines": [machine]}})
    assert _member_names(api, pool["id"]) == {"gold-1"}
    assert center in {c["id"] for c in api.get("centers")["items"]}


def test_a_center_reaches_a_pool_that_names_its_desktops(api: Api) -> None:
    """The pool lists gc-1 by id and names no center: the center still decides where
    gc-1's users connect."""
    center, desktop = _static(api, "gc", "192.0.2.10")
    pool = api.post("pools", {"name": "gpool", "desktop_ids": [desktop]})
    policy = api.post("policies", {"name": "gpol", "entries": [{"pool_id": pool["id"]}]})
    api.post(
        "assignment-rules",
        {"identity_source_id": api.source_id(), "name": "all", "policy_id": policy["id"]},
    )
    tad = _tenant_admin(api)
    moved = {"params": {"machines": [{"name": "gc-1", "address": "203.0.113.66"}]}}
    refused = tad.patch(f"centers/{center}", moved, status=403)
    assert "admin, whose role is global_admin, gets desktops through it" in refused["detail"]
    api.login("admin", ADMIN_PASSWORD)  # the global admin holds gc-1 now
    refused = tad.patch(f"centers/{center}", moved, status=403)
    assert "center gc" in refused["detail"]
    assert api.get(f"desktops/{desktop}")["address"] == "192.0.2.10"


def test_a_stronger_accounts_desktop_cannot_be_deleted_nor_its_machine_unforgotten(
    api: Api,
) -> None:
    """Deleting a free desktop of a global administrator's pool terminates or forgets
    the machine they would be handed; un-forgetting one puts a machine back into it."""
    ids = api.seed_pool(4)
    tad = _tenant_admin(api)  # signing in, they were handed one of the pool's desktops
    lab = api.get(f"desktops?center_id={ids['center']}")["items"]
    free, spare, forgotten = (d["id"] for d in lab if d["assigned_user_id"] is None)
    refused = tad.delete(f"desktops/{free}", status=403)
    assert refused["detail"].startswith("only a global administrator can delete desktop lab-")
    assert "admin, whose role is global_admin, gets desktops through it" in refused["detail"]
    assert api.get(f"desktops/{free}")["power_state"] != "deleting"
    # The global administrator forgets a machine; the tenant admin may not bring it back.
    api.delete(f"desktops/{forgotten}")
    [row] = api.get("forgotten-desktops")["items"]
    refused = tad.delete(f"forgotten-desktops/{row['id']}", status=403)
    assert "un-forget a machine of center lab-center" in refused["detail"]
    assert api.get("forgotten-desktops")["total"] == 1
    # A global administrator may do both.
    api.delete(f"forgotten-desktops/{row['id']}")
    api.delete(f"desktops/{spare}")
    # A desktop of the tenant admin's own, which no stronger account reaches, is theirs to
    # delete and un-forget.
    _, mine = _static(tad, "mine", "198.51.100.66")
    tad.delete(f"desktops/{mine}")
    [own] = [f for f in tad.get("forgotten-desktops")["items"] if f["name"] == "mine-1"]
    tad.delete(f"forgotten-desktops/{own['id']}")


def test_a_stronger_accounts_api_token_cannot_be_revoked(api: Api) -> None:
    """Revoking the global administrator's automation is cutting off a stronger account."""
    theirs = api.post(
        "api-tokens", {"name": "nightly", "scopes": ["desktops:read"], "expires_in_days": 1}
    )
    tad = _tenant_admin(api)
    refused = tad.delete(f"api-tokens/{theirs['id']}", status=403)
    assert refused["detail"] == (
        "only a global administrator can revoke the API token nightly of admin, "
        "who can be global administrator"
    )
    bot = Api(api.client, api.ctx, theirs["token"])
    assert bot.get("desktops")["total"] == 0  # still works
    # Their own token is theirs to revoke, and the global administrator may revoke both.
    own = tad.post("api-tokens", {"name": "own", "scopes": ["desktops:read"], "expires_in_days": 1})
    # Nor are the global administrator's token names and scopes theirs to read.
    assert {t["name"] for t in tad.get("api-tokens")["items"]} == {"own"}
    assert {t["name"] for t in api.get("api-tokens")["items"]} == {"nightly", "own"}
    tad.delete(f"api-tokens/{own['id']}")
    again = tad.post(
        "api-tokens", {"name": "again", "scopes": ["desktops:read"], "expires_in_days": 1}
    )
    api.delete(f"api-tokens/{again['id']}")
    api.delete(f"api-tokens/{theirs['id']}")
    assert "revoked" in bot.get("desktops", status=401)["detail"]
