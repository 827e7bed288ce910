"""The stronger-account rule where a desktop reaches a user indirectly: through a pool
nested in the one an administrator edits, and through the release of an assignment."""

from __future__ import annotations

from deskbroker.bootstrap import add_local_user
from deskbroker.domain.membership import nested_under
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api


def _tenant_admin(api: Api) -> Api:
    """A tenant admin of the tenant that holds the global admin (the default tenant)."""
    add_local_user(api.ctx, "tad", USER_PASSWORD, role="tenant_admin")
    return Api(api.client, api.ctx, api.login("tad")["token"])


def test_nested_under_follows_children_at_any_depth_and_survives_a_loop() -> None:
    parents = {"a": None, "b": "a", "c": "b", "d": None, "x": "y", "y": "x"}
    assert nested_under({"a"}, parents) == {"a", "b", "c"}
    assert nested_under({"b", "d"}, parents) == {"b", "c", "d"}
    assert nested_under({"x"}, parents) == {"x", "y"}
    assert nested_under(set(), parents) == set()


def test_a_parent_pool_and_its_center_reach_the_users_of_a_nested_pool(api: Api) -> None:
    """A nested pool hands out only its parent's members: whoever edits the parent (or a
    center the parent takes desktops from) chooses the hosts the nested pool offers."""
    ids = api.seed_pool(2)  # center, pool "lab", policy, catch-all rule: admin too
    parent = api.post("pools", {"name": "parent", "center_ids": [ids["center"]]})
    child = api.post("pools", {"name": "child", "parent_pool_id": parent["id"]})
    # The policy offers only the nested pool; neither the parent nor "lab" is in it now.
    api.patch(f"policies/{ids['policy']}", {"entries": [{"pool_id": child["id"]}]})
    other_center = api.post("centers", {"name": "spare", "kind": "static"})
    tad = _tenant_admin(api)

    for path, item, named, change in (
        ("pools", parent["id"], "pool parent", {"description": "x"}),
        ("centers", ids["center"], "center lab-center", {"scan_interval_s": 300}),
    ):
        detail = tad.patch(f"{path}/{item}", change, status=403)["detail"]
        assert detail == (
            f"only a global administrator can change {named}: admin, whose role is "
            "global_admin, gets desktops through it"
        ), detail
        assert (
            "only a global administrator can delete"
            in (tad.delete(f"{path}/{item}", status=403)["detail"])
        )
    # "lab" left the policy and a center no pool names reaches nobody: the tenant
    # admin's to change.
    assert tad.patch(f"pools/{ids['pool']}", {"description": "y"})["description"] == "y"
    assert tad.patch(f"centers/{other_center['id']}", {"scan_interval_s": 300})[
        "scan_interval_s"
    ] == (300)
    # The global admin, above everyone, still edits the parent.
    assert api.patch(f"pools/{parent['id']}", {"description": "ok"})["description"] == "ok"


def test_releasing_an_assignment_needs_standing_over_its_holder(api: Api) -> None:
    api.seed_pool(3, users=1)
    api.login("admin", ADMIN_PASSWORD)  # the catch-all rule hands the admin a desktop
    api.login("user0")
    tad = _tenant_admin(api)  # whose sign-in takes a desktop too
    users = {u["username"]: u["id"] for u in api.get("users")["items"]}
    held = {a["user_id"]: a["desktop_id"] for a in api.get("assignments")["items"]}
    admins = held[users["admin"]]

    detail = tad.delete(f"assignments/{admins}", status=403)["detail"]
    assert detail == (
        "only a global administrator can release the desktop of admin, who can be global "
        "administrator"
    ), detail
    assert api.get(f"assignments?user_id={users['admin']}")["total"] == 1
    # An ordinary user's desktop is the tenant admin's to release, and an unassigned
    # desktop still answers as before.
    tad.delete(f"assignments/{held[users['user0']]}")
    assert api.get(f"assignments?user_id={users['user0']}")["total"] == 0
    assert (
        "is not assigned to anyone"
        in (tad.delete(f"assignments/{held[users['user0']]}", status=409)["detail"])
    )
    # The global admin releases their own.
    api.delete(f"assignments/{admins}")
    assert api.get(f"assignments?user_id={users['admin']}")["total"] == 0
