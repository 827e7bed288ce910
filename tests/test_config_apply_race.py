"""A configuration document applied while an administrator edits a pool. Of the same
tenant: the document's first writes (a power plan here) locked the configuration
version's row, which every catalog write took last, and its pool write needs the
tenant's membership, which the administrator's edit holds from its start. Taken at the
document's first pool write, the two waited for each other on PostgreSQL and the database
rolled one back (the apply answered 503); taken at the document's start, the edit waits
for the document and both go through. (The version's row is now taken at the commit.)
Of another tenant: the edit does not wait for the document."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from deskbroker.services import catalog_crud
from tests.helpers import Api, bearer, tenant_admin_of
from tests.races import Seam, while_held
from tests.test_config_code import CONFIG, export


def test_a_document_applied_while_an_administrator_edits_a_pool_both_go_through(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = api.seed_pool(2)
    document = export(api)
    document["power_plans"].append(
        {"name": "weekend", "rules": [{"event": "idle", "after_minutes": 60, "action": "suspend"}]}
    )
    [pool] = [p for p in document["pools"] if p["name"] == "lab"]
    pool["description"] = "from the document"
    # Just after the document's first write moved the configuration version (the app
    # runs the route on a thread of its own: the first to move it is held).
    seam = Seam(first_only=True)
    seam.after(monkeypatch, catalog_crud, "bump_config_version")
    answers: dict[str, httpx.Response] = {}

    def apply() -> None:
        answers["apply"] = api.client.post(f"{CONFIG}/apply", json=document, headers=api.headers)

    def edit() -> None:
        answers["edit"] = api.client.patch(
            f"/api/v1/admin/pools/{ids['pool']}",
            json={"description": "by hand"},
            headers=api.headers,
        )

    while_held(seam, apply, edit, other_ends_first=False, other_waits_s=1)
    assert answers["apply"].status_code == 200, answers["apply"].text
    assert answers["edit"].status_code == 200, answers["edit"].text
    # The edit came second.
    assert api.get(f"pools/{ids['pool']}")["description"] == "by hand"
    got: dict[str, Any] = answers["apply"].json()
    assert ("create", "weekend") in {(c["action"], c["name"]) for c in got["changes"]}


def test_a_tenants_long_apply_does_not_hold_another_tenants_administrators(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One tenant's document, held after its first change of the configuration (a
    thousand pools take seconds), while another tenant's administrator edits a pool: on
    PostgreSQL the edit goes through meanwhile. The configuration version moves when a
    unit commits, so the version's row is not held for the apply's length (it was, and
    every other tenant's writes waited for it). SQLite has one writer: the edit waits."""
    acme = tenant_admin_of(api, "acme", "acme-boss")
    acme.post("pools", {"name": "acme-desks"})
    globex = tenant_admin_of(api, "globex", "globex-boss")
    theirs = globex.post("pools", {"name": "globex-desks"})
    document = export(acme)
    document["power_plans"].append(
        {"name": "weekend", "rules": [{"event": "idle", "after_minutes": 60, "action": "suspend"}]}
    )
    seam = Seam(first_only=True)
    seam.after(monkeypatch, catalog_crud, "bump_config_version")
    answers: dict[str, httpx.Response] = {}

    def apply() -> None:
        answers["apply"] = api.client.post(
            f"{CONFIG}/apply", json=document, headers=bearer(acme.token)
        )

    def edit() -> None:
        answers["edit"] = api.client.patch(
            f"/api/v1/admin/pools/{theirs['id']}",
            json={"description": "by hand"},
            headers=bearer(globex.token),
        )

    postgres = api.ctx.db.is_postgres
    while_held(seam, apply, edit, other_ends_first=postgres, other_waits_s=0 if postgres else 1)
    assert answers["apply"].status_code == 200, answers["apply"].text
    assert answers["edit"].status_code == 200, answers["edit"].text
    assert globex.get(f"pools/{theirs['id']}")["description"] == "by hand"
    assert "weekend" in {p["name"] for p in export(acme)["power_plans"]}
