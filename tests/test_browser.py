"""The portal and the console in Chromium (Playwright): an admin adds an OpenStack
center on cloudsim, a pool with provisioning limits, a policy and a rule, and watches the
pool fill; a user logs into the portal and connects; the admin sees the session and logs
it off. Every page is photographed at 1280x800 and 390x844 (under the test's tmp dir),
no page logs an error or asks another host for anything, and the main actions are
reached with the keyboard."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cloudsim.server import CloudSim
from deskbroker.bootstrap import add_local_user
from deskbroker.config import Settings
from deskbroker.engine.nodes import NodeHeartbeat
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from tests.authenticator import Authenticator
from tests.browser_support import SIZES, Watched, chromium, live_broker, sync_api, watch
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, wait_until

IMAGE = "cirros-0.6.2-x86_64-disk"
CONSOLE_VIEWS = (
    "dashboard",
    "desktops",
    "sessions",
    "pools",
    "centers",
    "images",
    "policies",
    "identity",
    "tenants",
    "people",
    "events",
    "jobs",
)
expect = sync_api.expect
# A loaded 2-core machine runs the engine, cloudsim and Chromium at once.
expect.set_options(timeout=20_000)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Pool samples every second, so the history chart has points within the test.
    return settings.model_copy(update={"stats_interval_s": 1.0, "engine_tick_s": 0.1})


@pytest.fixture
def sim() -> Iterator[CloudSim]:
    simulator = CloudSim(projects=["demo"], clock_speed=40.0).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def broker(ctx: BrokerContext) -> Iterator[str]:
    add_local_user(ctx, "admin", ADMIN_PASSWORD, role="global_admin")
    add_local_user(ctx, "alice", USER_PASSWORD)
    engine = Engine(ctx, workers=8)
    node = NodeHeartbeat(ctx, engine.owner)
    node.start()
    engine.start()
    try:
        with live_broker(ctx) as url:
            yield url
    finally:
        engine.stop()
        node.stop()


def _login(w: Watched, username: str, password: str) -> None:
    page = w.page
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def _fill(page: sync_api.Page, form: str, values: dict[str, str]) -> None:
    scope = page.get_by_role("form", name=form)
    for label, value in values.items():
        field = scope.get_by_label(label, exact=True)
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(label=value)
        else:
            field.fill(value)


def _admin_api(url: str) -> httpx.Client:
    # A setup write answered after more than 10 s twice in CI on a slow, loaded machine.
    client = httpx.Client(base_url=f"{url}/api/v1", timeout=30)
    token = client.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    client.headers["Authorization"] = f"Bearer {token.json()['token']}"
    return client


def _wait(check: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    wait_until(check, what, timeout_s=timeout_s, interval_s=0.25)


def _tab_to(page: sync_api.Page, name: str, presses: int = 40) -> None:
    """Tab from the top of the page until the element named ``name`` has the focus."""
    page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(presses):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "(() => { const e = document.activeElement;"
            " return e ? (e.innerText || e.getAttribute('aria-label') || e.id || '') : ''; })()"
        )
        if focused.strip() == name:
            return
    raise AssertionError(f"{presses} tabs never reached {name!r}")


def test_admin_builds_a_pool_user_connects_admin_logs_them_off(
    broker: str, sim: CloudSim, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    admin_http = _admin_api(broker)
    with chromium() as browser:
        admin = watch(browser.new_page(viewport=SIZES["wide"]), shots)
        page = admin.page
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(f"{broker}/console/")
        admin.shoot("console-login")
        _tab_to(page, "Log in")
        _login(admin, "admin", ADMIN_PASSWORD)
        expect(page.get_by_role("link", name="Centers")).to_be_visible()

        # An OpenStack center on cloudsim, tested as it is added.
        page.get_by_role("link", name="Centers").click()
        _fill(
            page,
            "Add an OpenStack center",
            {
                "Name": "cloud",
                "Keystone URL (v3)": sim.auth_url,
                "Project": "demo",
                "User": "demo",
                "Password": "password",
                "Network for new desktops": "private",
                "Scan every (seconds)": "5",
            },
        )
        page.get_by_role("button", name="Add and test").click()
        expect(page.get_by_text("Center cloud is added and answers")).to_be_visible()
        expect(page.get_by_role("cell", name="cloud", exact=True)).to_be_visible()

        # A pool that keeps 2 free and never more than 3, with a preview of that.
        page.get_by_role("link", name="Pools").click()
        _fill(
            page,
            "Add a pool",
            {
                "Name": "auto",
                "Center": "cloud",
                "Keep this many free": "2",
                "Never more than": "3",
                "Image": IMAGE,
                "Flavor": "m1.tiny",
                "Desktop names": "vdi-{SEQUENCE:3}",
            },
        )
        expect(page.get_by_text("while fewer than 2 are free, and stops at 3")).to_be_visible()
        # The broker's own preview of the definition, before it is saved.
        page.get_by_role("button", name="Preview the pool").click()
        expect(page.get_by_text("This pool would take 0 desktops")).to_be_visible()
        expect(page.get_by_text("the broker would build 2 desktops at once")).to_be_visible()
        admin.shoot("console-pool-preview")
        page.get_by_role("button", name="Add pool").click()
        expect(page.get_by_text("Pool auto is added.")).to_be_visible()

        page.get_by_role("link", name="Policies and plans").click()
        _fill(page, "Add a policy", {"Name": "staff", "Pool": "auto"})
        page.get_by_role("form", name="Add a policy").get_by_label("Users may restart it").check()
        page.get_by_role("button", name="Add policy").click()
        expect(page.get_by_text("Policy staff is added.")).to_be_visible()

        page.get_by_role("link", name="Identity and rules").click()
        _fill(page, "Add a rule", {"Name": "everyone", "Policy": "staff"})
        page.get_by_role("button", name="Add rule").click()
        expect(page.get_by_text("Rule everyone is added.")).to_be_visible()

        # The pool fills: two running desktops, and the history chart has samples.
        def running() -> int:
            items = admin_http.get("/admin/desktops?limit=100").json()["items"]
            return sum(1 for d in items if d["power_state"] == "running")

        _wait(lambda: running() >= 2, "the pool to build two desktops")
        pool = admin_http.get("/admin/pools?name=auto").json()["items"][0]
        _wait(
            lambda: admin_http.get(f"/admin/pools/{pool['id']}/history").json()["points"],
            "a pool sample",
        )
        page.get_by_role("link", name="Pools").click()
        page.get_by_role("button", name="History of auto").click()
        chart = page.locator("#pool-charts canvas")
        expect(chart).to_be_visible()
        assert "samples" in (chart.get_attribute("aria-label") or "")
        # The pool's edit form previews the pool as it is now, and saves.
        page.get_by_role("button", name="Edit auto").click()
        editor = page.get_by_role("form", name="Edit auto")
        expect(editor.get_by_label("Never more than")).to_have_value("3")
        editor.get_by_role("button", name="Preview auto").click()
        expect(editor.get_by_text("This pool would take", exact=False)).to_be_visible()
        expect(editor.get_by_role("cell", name="vdi-001", exact=True)).to_be_visible()
        admin.shoot("console-pool-edit")
        editor.get_by_label("Desktop names").fill("vdi-{SEQUENCE:3}")
        editor.get_by_role("button", name="Save changes").click()
        expect(page.get_by_text("Pool auto is saved.")).to_be_visible()
        page.get_by_role("link", name="Dashboard").click()
        expect(page.get_by_text("desktops by power state", exact=False)).to_have_count(0)
        expect(page.locator(".stat").first).to_be_visible()

        # Users of the local source may add an authenticator app: set in the source's form.
        page.get_by_role("link", name="Identity and rules").click()
        page.get_by_role("button", name="Edit source local").click()
        _fill(page, "Edit source local", {"Second factor": "optional"})
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_text("Source local is saved.")).to_be_visible()
        source = admin_http.get("/admin/identity-sources?kind=local").json()["items"][0]
        assert source["second_factor"] == "optional"

        # The user: the portal on a phone-sized screen, then connect (a descriptor file).
        user = watch(
            browser.new_page(viewport=SIZES["phone"], accept_downloads=True),
            shots,
        )
        portal = user.page
        portal.goto(f"{broker}/portal/")
        user.shoot("portal-login")
        _tab_to(portal, "Log in")
        _login(user, "alice", USER_PASSWORD)
        connect = portal.get_by_role("button", name="Connect to vdi-", exact=False)
        expect(connect).to_be_visible(timeout=30_000)
        user.shoot("portal-desktops")
        desktop_name = connect.inner_text().removeprefix("Connect to ")
        _tab_to(portal, f"Connect to {desktop_name}")
        with portal.expect_download() as download:
            portal.keyboard.press("Enter")
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        assert desktop_name in saved.name or saved.suffix in (".rdp", ".vnc", ".sh")
        assert saved.read_text().strip()
        expect(portal.get_by_text("is downloaded")).to_be_visible()
        # The policy lets its users restart their desktop, and nothing else.
        portal.on("dialog", lambda dialog: dialog.accept())
        expect(portal.get_by_role("button", name=f"Shut down {desktop_name}")).to_have_count(0)
        _tab_to(portal, f"Restart {desktop_name}")
        portal.keyboard.press("Enter")
        expect(portal.get_by_text(f"{desktop_name} is restarting.")).to_be_visible()
        user.shoot("portal-restart")
        portal.get_by_role("button", name="Set up an authenticator app").click()
        expect(portal.locator("canvas.qr")).to_be_visible()
        user.shoot("portal-enrolment")
        app = Authenticator(portal.locator("code.secret").inner_text())
        portal.get_by_label("First code from the app").fill(app.code())
        portal.get_by_role("button", name="Confirm").click()
        expect(portal.get_by_text("Your authenticator app is set up")).to_be_visible()

        # The desktop's agent reports the login (as deskbroker-agent would).
        desktop = admin_http.get(f"/admin/desktops?name={desktop_name}").json()["items"][0]
        agent_token = admin_http.post(f"/admin/desktops/{desktop['id']}/agent-token").json()
        reported = httpx.post(
            f"{broker}/api/v1/agent/events",
            json={"event": "login", "user": "alice", "client_address": "127.0.0.1"},
            headers={"Authorization": f"Bearer {agent_token['token']}"},
        )
        assert reported.status_code < 300, reported.text

        # The admin sees the session, sends a message and logs it off, through the agent.
        page.get_by_role("link", name="Sessions").click()
        log_off = page.get_by_role("button", name="Log off alice")
        expect(log_off).to_be_visible()
        _fill(page, "Send a message", {"Message": "Maintenance at noon"})
        page.get_by_role("button", name="Send", exact=True).click()
        expect(page.get_by_text("Message sent: the message is shown")).to_be_visible()
        log_off.click()
        expect(page.get_by_text("Log-off sent: the user is logged off")).to_be_visible()
        agent = {"Authorization": f"Bearer {agent_token['token']}"}
        beat = httpx.post(f"{broker}/api/v1/agent/heartbeat", json={}, headers=agent).json()
        assert [(a["kind"], a["message"]) for a in beat["actions"]] == [
            ("message", "Maintenance at noon"),
            ("logoff", ""),
        ]
        # The agent logs the user off and reports it, as deskbroker-agent does.
        done = [{"id": a["id"], "ok": True} for a in beat["actions"]]
        httpx.post(f"{broker}/api/v1/agent/heartbeat", json={"done": done}, headers=agent)
        reported = httpx.post(
            f"{broker}/api/v1/agent/events",
            json={"event": "logout", "user": "alice"},
            headers=agent,
        )
        assert reported.status_code < 300, reported.text
        page.reload()
        expect(page.get_by_role("cell", name="logged_out", exact=True)).to_be_visible()
        expect(page.get_by_role("button", name="Log off alice")).to_have_count(0)
        sessions = admin_http.get("/admin/sessions").json()["items"]
        assert all(s["state"] == "logged_out" for s in sessions), sessions

        # People: the admin edits the user's display name in the console.
        page.get_by_role("link", name="Users and roles").click()
        page.get_by_role("button", name="Edit alice").click()
        _fill(page, "Edit alice", {"Display name": "Alice Liddell"})
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_text("alice is saved.")).to_be_visible()
        alice = admin_http.get("/admin/users?username=alice").json()["items"][0]
        assert alice["display_name"] == "Alice Liddell"

        # Plans and the policy, edited in their forms.
        page.get_by_role("link", name="Policies and plans").click()
        _fill(
            page,
            "Add a power plan",
            {
                "Name": "nightly",
                "Rule 1: on": "disconnect",
                "Rule 1: after (minutes)": "30",
                "Rule 1: do": "suspend",
            },
        )
        page.get_by_role("form", name="Add a power plan").get_by_role("button").click()
        expect(page.get_by_text("The power plan nightly is saved.")).to_be_visible()
        # Every rule of a plan is in its form, with a row to add one.
        page.get_by_role("button", name="Edit nightly", exact=True).click()
        _fill(
            page,
            "Edit power plan nightly",
            {"Rule 2: on": "logout", "Rule 2: after (minutes)": "5", "Rule 2: do": "shutdown"},
        )
        page.get_by_role("form", name="Edit power plan nightly").get_by_role(
            "button", name="Save changes"
        ).click()
        # The same words as the add's: wait for the save itself before the view redraws.
        wait_until(
            lambda: (
                len(admin_http.get("/admin/power-plans?name=nightly").json()["items"][0]["rules"])
                == 2
            ),
            timeout_s=20,
            what="the second rule saved",
        )
        expect(page.get_by_role("form", name="Edit power plan nightly")).to_have_count(0)
        _fill(
            page,
            "Add a protocol plan",
            {"Name": "browser", "Protocols, first preferred": "html5-vnc, vnc"},
        )
        page.get_by_role("form", name="Add a protocol plan").get_by_role("button").click()
        expect(page.get_by_text("The protocol plan browser is saved.")).to_be_visible()
        page.get_by_role("button", name="Edit policy staff").click()
        page.get_by_role("form", name="Edit policy staff").get_by_label(
            "Entry 1: Users may shut it down"
        ).check()
        _fill(page, "Edit policy staff", {"Entry 1: power plan": "nightly"})
        admin.shoot("console-policy-edit")
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_text("Policy staff is saved.")).to_be_visible()
        staff = admin_http.get("/admin/policies?name=staff").json()["items"][0]
        assert staff["entries"][0]["user_power_actions"] == ["stop", "reboot"]
        nightly = admin_http.get("/admin/power-plans?name=nightly").json()["items"][0]
        assert nightly["rules"] == [
            {"event": "disconnect", "after_minutes": 30, "action": "suspend", "warn_minutes": None},
            {"event": "logout", "after_minutes": 5, "action": "shutdown", "warn_minutes": None},
        ]
        assert len(staff["entries"]) == 1, "the empty group added no entry"
        browser_plan = admin_http.get("/admin/protocol-plans?name=browser").json()["items"][0]
        assert [p["protocol"] for p in browser_plan["protocols"]] == ["html5-vnc", "vnc"]

        # Every page at both sizes.
        for size, viewport in SIZES.items():
            for w in (admin, user):
                w.page.set_viewport_size(viewport)
            for view in CONSOLE_VIEWS:
                page.goto(f"{broker}/console/#{view}")
                expect(page.locator("#view-title")).to_be_visible()
                page.wait_for_load_state("networkidle")
                expect(page.locator(".note.error")).to_have_count(0)
                if view == "jobs":
                    # The node serving the console is listed with its own host and pid.
                    nodes = page.get_by_role("table", name="cluster nodes")
                    expect(nodes).to_contain_text(socket.gethostname())
                    expect(nodes).to_contain_text(str(os.getpid()))
                admin.shoot(f"console-{view}-{size}")
            portal.reload()
            expect(connect).to_be_visible()
            user.shoot(f"portal-{size}")
            # The document is built on its first request (about a second idle, many under
            # a loaded CI): asked for here, so the page's own wait is for the page.
            assert httpx.get(f"{broker}/api/v1/openapi.json", timeout=60).status_code == 200
            docs = watch(browser.new_page(viewport=viewport), shots)
            docs.page.goto(f"{broker}/api/v1/docs")
            expect(docs.page.get_by_text("deskbroker", exact=False).first).to_be_visible(
                timeout=45_000
            )
            expect(docs.page.locator(".opblock").first).to_be_visible()
            docs.shoot(f"api-docs-{size}")
            assert not docs.errors, docs.errors
        assert len(list(shots.glob("*.png"))) >= 2 * (len(CONSOLE_VIEWS) + 2)
    assert not admin.errors, admin.errors
    assert not user.errors, user.errors


def _role_user(admin_http: httpx.Client, username: str, role: str) -> None:
    source = admin_http.get("/admin/identity-sources?kind=local").json()["items"][0]
    made = admin_http.post(
        "/admin/users",
        json={"identity_source_id": source["id"], "username": username, "password": USER_PASSWORD},
    )
    assert made.status_code == 201, made.text
    changed = admin_http.patch(f"/admin/users/{made.json()['id']}", json={"role": role})
    assert changed.status_code == 200, changed.text


def _static_session(broker: str, admin_http: httpx.Client) -> None:
    """A static center of one desktop, alice holding it, her session reported by its agent."""
    center = admin_http.post(
        "/admin/centers",
        json={
            "name": "lab",
            "kind": "static",
            "params": {"machines": [{"name": "lab-001", "address": "127.0.1.1"}]},
        },
    ).json()
    pool = admin_http.post("/admin/pools", json={"name": "lab", "center_ids": [center["id"]]})
    policy = admin_http.post(
        "/admin/policies", json={"name": "lab", "entries": [{"pool_id": pool.json()["id"]}]}
    ).json()
    source = admin_http.get("/admin/identity-sources?kind=local").json()["items"][0]
    admin_http.post(
        "/admin/assignment-rules",
        json={"identity_source_id": source["id"], "name": "all", "policy_id": policy["id"]},
    )
    login = httpx.post(
        f"{broker}/api/v1/auth/login", json={"username": "alice", "password": USER_PASSWORD}
    ).json()
    desktop = login["offers"][0]["desktop"]
    agent = admin_http.post(f"/admin/desktops/{desktop['id']}/agent-token").json()
    reported = httpx.post(
        f"{broker}/api/v1/agent/events",
        json={"event": "login", "user": "alice"},
        headers={"Authorization": f"Bearer {agent['token']}"},
    )
    assert reported.status_code < 300, reported.text


def test_the_console_draws_only_the_buttons_the_role_allows(broker: str, tmp_path: Path) -> None:
    admin_http = _admin_api(broker)
    _role_user(admin_http, "helen", "helpdesk")
    _role_user(admin_http, "otto", "auditor")
    _static_session(broker, admin_http)
    # A second password source: the login form offers the domain selector.
    corp = admin_http.post(
        "/admin/identity-sources",
        json={"name": "corp", "kind": "local", "domain": "corp.example", "position": 5},
    )
    assert corp.status_code == 201, corp.text
    with chromium() as browser:
        for username, role in (("helen", "helpdesk"), ("otto", "auditor")):
            w = watch(browser.new_page(viewport=SIZES["wide"]), tmp_path)
            page = w.page
            page.goto(f"{broker}/console/")
            domain = page.get_by_label("Domain", exact=True)
            expect(domain).to_be_visible()
            domain.select_option(label="local")
            _login(w, username, USER_PASSWORD)
            expect(page.get_by_text(f"{username} ({role})")).to_be_visible()
            helpdesk = role == "helpdesk"

            page.get_by_role("link", name="Sessions").click()
            expect(page.get_by_role("cell", name="alice", exact=True)).to_be_visible()
            expect(page.get_by_role("button", name="Log off alice")).to_have_count(int(helpdesk))
            expect(page.get_by_role("button", name="Lock alice's session")).to_have_count(
                int(helpdesk)
            )
            expect(page.get_by_role("button", name="End alice's session")).to_have_count(
                int(helpdesk)
            )
            expect(page.get_by_role("form", name="Send a message")).to_have_count(int(helpdesk))
            if helpdesk:
                page.get_by_role("button", name="Lock alice's session").click()
                expect(page.get_by_text("Lock sent: the session is locked")).to_be_visible()

            page.get_by_role("link", name="Desktops").click()
            expect(page.get_by_role("cell", name="lab-001", exact=True)).to_be_visible()
            expect(page.get_by_role("button", name="Power", exact=True)).to_have_count(
                int(helpdesk)
            )
            expect(page.get_by_role("button", name="Release")).to_have_count(int(helpdesk))
            expect(page.get_by_role("button", name="Delete")).to_have_count(0)
            expect(page.get_by_role("button", name="Make available")).to_have_count(0)

            for view, form in (
                ("Pools", "Add a pool"),
                ("Centers", "Add an OpenStack center"),
                ("Policies and plans", "Add a policy"),
                ("Identity and rules", "Add a rule"),
            ):
                page.get_by_role("link", name=view).click()
                expect(page.locator("#view-title")).to_have_text(view)
                page.wait_for_load_state("networkidle")
                expect(page.get_by_role("form", name=form)).to_have_count(0)
            expect(page.get_by_role("button", name="Scan lab now")).to_have_count(0)
            expect(page.get_by_role("button", name="Edit source local")).to_have_count(0)
            page.get_by_role("link", name="Users and roles").click()
            expect(page.get_by_role("cell", name="alice", exact=True)).to_be_visible()
            expect(page.get_by_role("button", name="Edit alice")).to_have_count(0)
            w.shoot(f"console-{role}")
            # What the console hides, the API refuses: the same check behind both.
            token = page.evaluate("sessionStorage.getItem('deskbroker.token')")
            refused = httpx.post(
                f"{broker}/api/v1/admin/pools",
                json={"name": "sneaky"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert refused.status_code == 403
            assert not w.errors, w.errors
