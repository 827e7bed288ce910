"""The console's centers in real Chromium: a center whose desktops wait for removal is
refused a plain delete, and the console then offers the forced delete, saying what it
leaves behind (``services/center_removal``); a global administrator's vouch for a center
(the pool guard's) is shown and given or withdrawn there."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Dialog, Page, expect

from deskbroker.services.center_removal import ABANDONED_KIND
from tests.browser_support import SIZES, chromium, live_broker, need_chromium, watch
from tests.helpers import ADMIN_PASSWORD, Api, built_desktops, tenant_admin_of
from tests.tarpit import silent_center, tarpit


def test_the_console_offers_the_forced_delete_of_a_center_whose_cloud_is_gone(
    api: Api, tmp_path: Path
) -> None:
    need_chromium()
    with tarpit() as pit, live_broker(api.ctx) as url, chromium() as browser:
        gone = silent_center(api, pit, timeout_s=1.0)
        [doomed] = built_desktops(api, gone["id"], 1)
        api.delete(f"desktops/{doomed}", status=202)

        w = watch(browser.new_page(viewport=SIZES["wide"]), tmp_path)
        page = w.page
        dialogs: list[str] = []

        def answer(dialog: object) -> None:
            dialogs.append(dialog.message)  # type: ignore[attr-defined]
            # The first question (delete?) yes, the second (force?) no the first time.
            dialog.accept() if len(dialogs) != 2 else dialog.dismiss()  # type: ignore[attr-defined]

        page.on("dialog", answer)
        page.goto(f"{url}/console/")
        page.get_by_label("User name").fill("admin")
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("link", name="Centers").click()
        delete = page.get_by_role("button", name=f"Delete center {gone['name']}")
        delete.click()
        _wait_for(page, dialogs, 2)
        expect(page.get_by_role("cell", name=gone["name"], exact=True)).to_be_visible()
        assert "still removing 1 desktop" in dialogs[1]
        assert "center.machines_abandoned" in dialogs[1]
        assert api.get(f"centers?name={gone['name']}")["total"] == 1

        # Asked again, and this time forced: the center goes, the machine is named.
        delete.click()
        expect(page.get_by_text("machines it was still removing")).to_be_visible()
        expect(page.get_by_role("cell", name=gone["name"], exact=True)).to_have_count(0)
        _wait_for(page, dialogs, 4)
        assert api.get(f"centers?name={gone['name']}")["total"] == 0
        [event] = api.get(f"events?kind={ABANDONED_KIND}")["items"]
        assert event["detail"]["count"] == 1
        # The plain deletes' 409s, which the console answered with its question, and
        # nothing else.
        unexpected = [e for e in w.errors if "409" not in e or gone["id"] not in e]
        assert not unexpected, w.errors


def _wait_for(page: Page, dialogs: list[str], count: int) -> None:
    """Until ``count`` dialogs were answered (the page's own waits let Playwright deliver
    them; a sleep would not)."""
    for _ in range(200):
        if len(dialogs) >= count:
            break
        page.wait_for_timeout(50)
    assert len(dialogs) == count, dialogs


def test_a_global_admin_vouches_for_a_center_in_the_console(api: Api, tmp_path: Path) -> None:
    """The pool guard's vouch (``centers.vouched_by_global_admin``) shown per center, and
    given or withdrawn by a global administrator's button, after a question that says
    what it means; a tenant administrator sees the column, not the button."""
    need_chromium()
    tad = tenant_admin_of(api, "default", "tad")
    theirs = tad.post("centers", {"name": "theirs", "kind": "static"})
    assert theirs["vouched_by_global_admin"] is False
    with live_broker(api.ctx) as url, chromium() as browser:
        w = watch(browser.new_page(viewport=SIZES["wide"]), tmp_path)
        page = w.page
        asked: list[str] = []

        def answer(dialog: Dialog) -> None:
            asked.append(dialog.message)
            dialog.accept()

        page.on("dialog", answer)
        page.goto(f"{url}/console/")
        page.get_by_label("User name").fill("admin")
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("link", name="Centers").click()
        row = page.get_by_role("row").filter(has_text="theirs")
        expect(row.get_by_role("cell", name="no", exact=True)).to_be_visible()
        page.get_by_role("button", name="Vouch for theirs").click()
        expect(page.get_by_text("You vouch for theirs.")).to_be_visible()
        assert "who controls its cloud" in asked[-1]
        assert api.get("centers?name=theirs")["items"][0]["vouched_by_global_admin"] is True
        page.get_by_role("button", name="Withdraw the vouch for theirs").click()
        expect(page.get_by_text("You no longer vouch for theirs.")).to_be_visible()
        assert api.get("centers?name=theirs")["items"][0]["vouched_by_global_admin"] is False
        assert not w.errors, w.errors

        # A tenant administrator: the column, no button (the API would refuse it).
        other = watch(browser.new_page(viewport=SIZES["wide"]), tmp_path)
        other.page.goto(f"{url}/console/")
        other.page.get_by_label("User name").fill("tad")
        other.page.get_by_label("Password").fill(ADMIN_PASSWORD)
        other.page.get_by_role("button", name="Log in").click()
        other.page.get_by_role("link", name="Centers").click()
        expect(other.page.get_by_role("columnheader", name="Vouched")).to_be_visible()
        expect(other.page.get_by_role("button", name="Vouch for theirs")).to_have_count(0)
        assert not other.errors, other.errors
