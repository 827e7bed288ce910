"""Rolling a pool onto a new image against cloudsim: free desktops first, held ones once
their users left, never one in use; progress figures, pause, resume and roll back."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from cloudsim.server import CloudSim
from deskbroker.bootstrap import add_local_user
from deskbroker.cli import app
from deskbroker.engine.runner import Engine
from tests.connect_support import live_broker
from tests.desktop_agent import Agent, assigned_desktop
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.helpers import USER_PASSWORD, Api

OLD = "cirros-0.6.2-x86_64-disk"
TOTAL, HELD, BATCH = 20, 5, 4


def _servers(sim: CloudSim) -> dict[str, dict[str, Any]]:
    return {
        s["id"]: s
        for s in sim.servers("demo")
        if s["status"] != "DELETED" and s["task_state"] != "deleting"
    }


def _image_ids(api: Api, center_id: str) -> dict[str, str]:
    """The center's images by name, as the admin's picker lists them."""
    return {i["name"]: i["id"] for i in api.get(f"centers/{center_id}/catalog")["images"]}


def _rollout(api: Api, pool_id: str) -> dict[str, Any]:
    return api.get(f"pools/{pool_id}/rollout")


class World:
    """A 20-desktop pooled pool on cloudsim, five of its desktops held by users with a
    session open."""

    def __init__(self, api: Api, sim: CloudSim, engine: Engine) -> None:
        self.api, self.sim, self.engine = api, sim, engine
        center = openstack_center(api, sim)
        self.center = center["id"]
        self.pool = provisioning_pool(api, center["id"], n=TOTAL, m=TOTAL)["id"]
        policy = api.post(
            "policies",
            {"name": "auto", "entries": [{"pool_id": self.pool, "assignment": "pooled"}]},
        )
        api.post(
            "assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]}
        )
        run_until(
            engine,
            lambda: api.get(f"pools/{self.pool}/status")["counts"]["available"] == TOTAL,
            what="20 desktops built",
        )
        self.members = {m["id"]: m["name"] for m in api.get(f"pools/{self.pool}/members")["items"]}
        by_name = {s["name"]: s["id"] for s in _servers(sim).values()}
        self.server_of = {d: by_name[name] for d, name in self.members.items()}
        self.agents: dict[str, Agent] = {}
        for i in range(HELD):
            add_local_user(api.ctx, f"user{i}", USER_PASSWORD)
            desktop = assigned_desktop(api, f"user{i}")
            agent = Agent.mint(api, desktop)
            agent.send("login", user=f"user{i}")
            self.agents[f"user{i}"] = agent
        self.held = {a.desktop_id for a in self.agents.values()}
        assert len(self.held) == HELD

    def on_image(self, image_id: str) -> set[str]:
        """Desktops whose server the cloud has on ``image_id`` (rebuilt or rebuilding)."""
        servers = _servers(self.sim)
        return {d for d, s in self.server_of.items() if servers[s]["image_id"] == image_id}

    def check(self, image_id: str, still_held: set[str]) -> dict[str, Any]:
        """The figures agree with the cloud, and no held desktop was touched."""
        progress = _rollout(self.api, self.pool)
        servers = _servers(self.sim)
        assert set(servers) == set(self.server_of.values())  # none replaced, none lost
        for desktop in still_held:
            server = servers[self.server_of[desktop]]
            assert server["image_id"] != image_id and server["status"] == "ACTIVE", server
        sessions = self.api.get("sessions?state=logged_in")["items"]
        assert {s["desktop_id"] for s in sessions} >= still_held
        figures = ("on_image", "rebuilding", "to_rebuild", "waiting_for_users", "not_ready")
        assert sum(progress[f] for f in figures) == progress["total"] == TOTAL, progress
        assert progress["failed"] == 0 and progress["persistent_kept"] == 0, progress
        assert progress["waiting_for_users"] == len(still_held), progress
        # Between two engine runs every rebuild the broker asked for is on the cloud.
        moved = self.on_image(image_id)
        assert progress["on_image"] + progress["rebuilding"] == len(moved), (progress, moved)
        assert progress["rebuilding"] <= progress["batch_size"]
        return progress

    def roll(self, image_id: str, still_held: set[str], until: Any) -> list[int]:
        """Run the engine until ``until(progress)``, checking the figures at each step;
        returns the ``on_image`` figures seen (never going down)."""
        seen: list[int] = []

        def step() -> bool:
            progress = self.check(image_id, still_held)
            seen.append(progress["on_image"])
            return bool(until(progress))

        run_until(self.engine, step, what="the rollout to get there")
        assert seen == sorted(seen)
        return seen

    def leave(self, user: str) -> None:
        self.agents[user].send("logout", user=user)


def test_rolling_image_update_spares_sessions_and_can_pause_and_roll_back(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    world = World(api, sim, engine)
    sim.seed_images(1, name_prefix="golden")
    new_name = "golden-00000"
    images = _image_ids(api, world.center)
    old, new = images[OLD], images[new_name]
    assert world.on_image(old) == set(world.server_of)

    started = api.post(
        f"pools/{world.pool}/rollout", {"image": new_name, "batch_size": BATCH}, status=200
    )
    assert (started["state"], started["image_id"], started["previous_image"]) == (
        "rolling",
        new,
        OLD,
    )
    assert started["on_image"] == 0 and started["waiting_for_users"] == HELD
    assert started["summary"].startswith(f"0 of {TOTAL} on the new image")
    assert f"{HELD} waiting for their users to leave" in started["summary"]
    assert api.get(f"pools/{world.pool}")["provisioning"]["parameters"]["image"] == new_name
    # A second rollout while this one runs is refused in words, and changes nothing.
    refused = api.post(f"pools/{world.pool}/rollout", {"image": OLD}, status=409)
    assert "rolling" in refused["detail"]

    # Free desktops first, a batch at a time; then pause once some are done.
    world.roll(new, world.held, lambda p: p["on_image"] >= BATCH)
    paused = api.post(f"pools/{world.pool}/rollout/pause", {}, status=200)
    assert paused["state"] == "paused" and paused["summary"].startswith("paused: ")
    # Those under way finish; no new one starts.
    world.roll(new, world.held, lambda p: p["rebuilding"] == 0)
    frozen = world.on_image(new)
    for _ in range(20):
        engine.run_once()
    assert world.on_image(new) == frozen and len(frozen) < TOTAL - HELD
    assert api.post(f"pools/{world.pool}/rollout/pause", {}, status=409)["detail"] == (
        "pool auto's rollout is paused: it cannot pause"
    )

    api.post(f"pools/{world.pool}/rollout/resume", {}, status=200)
    done_free = world.roll(new, world.held, lambda p: p["on_image"] == TOTAL - HELD)
    assert done_free[-1] == TOTAL - HELD
    progress = _rollout(api, world.pool)
    assert progress["state"] == "rolling"
    assert progress["summary"] == (
        f"{TOTAL - HELD} of {TOTAL} on the new image, {HELD} waiting for their users to leave"
    )
    # Nobody who was working lost a desktop: the five are still theirs, on the old image.
    holders = {a["desktop_id"] for a in api.get("assignments")["items"]}
    assert holders == world.held

    # Users leave one by one: each desktop is rebuilt once its user is gone.
    remaining = set(world.held)
    for i in range(HELD):
        world.leave(f"user{i}")
        remaining.discard(world.agents[f"user{i}"].desktop_id)
        world.roll(new, remaining, lambda p, n=i: p["on_image"] == TOTAL - HELD + n + 1)
    run_until(engine, lambda: _rollout(api, world.pool)["state"] == "done", what="done")
    final = _rollout(api, world.pool)
    assert final["summary"] == f"done: {TOTAL} of {TOTAL} on the new image"
    assert world.on_image(new) == set(world.server_of)
    assert all(s["status"] == "ACTIVE" for s in _servers(sim).values())

    # Roll back: the same rules, aimed at the image the pool had before.
    back = api.post(f"pools/{world.pool}/rollout/roll-back", {}, status=200)
    assert (back["state"], back["image_id"], back["rolled_back"]) == ("rolling", old, True)
    assert back["summary"].startswith(f"0 of {TOTAL} on the previous image")
    world.roll(old, set(), lambda p: p["state"] == "done")
    assert world.on_image(old) == set(world.server_of)
    assert api.get(f"pools/{world.pool}")["provisioning"]["parameters"]["image"] == OLD
    kinds = [e["kind"] for e in api.get(f"events?pool_id={world.pool}&limit=500")["items"]]
    assert kinds.count("rollout.rebuild") == 2 * TOTAL
    assert {"rollout.start", "rollout.pause", "rollout.resume", "rollout.roll_back"} <= set(kinds)


def test_the_cli_rolls_a_pool_and_bad_requests_are_refused_in_words(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=3, m=3)["id"]
    run_until(engine, lambda: api.get(f"pools/{pool}/status")["counts"]["available"] == 3)
    none = _rollout(api, pool)
    assert (none["state"], none["image"]) == ("none", OLD)
    sim.seed_images(1, name_prefix="golden")

    # Refused before anything is written: an image the center lacks, a bad batch size,
    # nothing to pause, another tenant's (or no) pool.
    unknown = api.post(f"pools/{pool}/rollout", {"image": "no-such-image"}, status=422)
    assert unknown["detail"] == "center cloud has no image 'no-such-image'"
    api.post(f"pools/{pool}/rollout", {"image": "golden-00000", "batch_size": 0}, status=422)
    assert (
        "has no rollout to pause"
        in api.post(f"pools/{pool}/rollout/pause", {}, status=409)["detail"]
    )
    api.post("pools/0123456789abcdef0123456789abcdef/rollout", {"image": OLD}, status=404)
    static = api.post("pools", {"name": "static-only"})
    assert (
        "builds in no center"
        in api.post(f"pools/{static['id']}/rollout", {"image": OLD}, status=409)["detail"]
    )
    assert api.get(f"pools/{pool}")["provisioning"]["parameters"]["image"] == OLD
    assert _rollout(api, pool)["state"] == "none"

    token = api.post("api-tokens", {"name": "ops", "scopes": ["*:*"], "expires_in_days": 1})
    runner = CliRunner()
    with live_broker(api.ctx) as url:
        env = {"DESKBROKER_URL": url, "DESKBROKER_TOKEN": token["token"]}

        def cli(*args: str) -> str:
            result = runner.invoke(app, ["pool", *args], env=env)
            assert result.exit_code == 0, result.output
            return " ".join(result.output.split())

        assert "rolling: 0 of 3 on the new image" in cli("rollout", "auto", "golden-00000")
        cli("pause", "auto")
        assert cli("status", "auto").startswith("paused: 0 of 3 on the new image")
        cli("resume", "auto")
        run_until(engine, lambda: _rollout(api, pool)["state"] == "done", what="done")
        assert cli("status", "auto").startswith("done: 3 of 3 on the new image")
        assert "0 of 3 on the previous image" in cli("roll-back", "auto")
        run_until(engine, lambda: _rollout(api, pool)["state"] == "done", what="back")
        missing = runner.invoke(app, ["pool", "status", "nope"], env=env)
        assert missing.exit_code == 1 and "pool nope does not exist" in missing.output
    assert {s["image_id"] for s in _servers(sim).values()} == {_image_ids(api, center["id"])[OLD]}


def test_persistent_desktops_only_on_request_keeping_their_users_data_volume(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=3, m=3)["id"]
    provisioning = api.get(f"pools/{pool}")["provisioning"]
    provisioning["parameters"]["data_volume_gb"] = 2
    api.patch(f"pools/{pool}", {"provisioning": provisioning})
    policy = api.post("policies", {"name": "keep", "entries": [{"pool_id": pool}]})
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    run_until(engine, lambda: api.get(f"pools/{pool}/status")["counts"]["available"] == 3)
    add_local_user(api.ctx, "keeper", USER_PASSWORD)
    kept = assigned_desktop(api, "keeper")
    assert api.get(f"desktops/{kept}")["assignment_kind"] == "persistent"
    server = api.get(f"desktops/{kept}")["external_id"]
    driver = _driver(api, center["id"])

    def volumes() -> list[str]:
        body = driver.session.compute_get(f"/servers/{server}/os-volume_attachments")
        return [a["volumeId"] for a in body["volumeAttachments"]]

    run_until(engine, lambda: volumes() != [], what="the user's data volume attached")
    [volume] = volumes()
    agent = Agent.mint(api, kept)
    agent.send("login", user="keeper")
    sim.seed_images(2, name_prefix="golden")
    images = _image_ids(api, center["id"])

    # Not asked for: the persistent desktop keeps its image; the rollout is done without it.
    api.post(f"pools/{pool}/rollout", {"image": "golden-00000"}, status=200)
    run_until(engine, lambda: _rollout(api, pool)["state"] == "done", what="done")
    first = _rollout(api, pool)
    assert (first["on_image"], first["persistent_kept"]) == (2, 1)
    assert first["summary"] == (
        "done: 2 of 3 on the new image, 1 persistent kept on their image until asked"
    )
    assert _servers(sim)[server]["image_id"] == images[OLD]

    # Asked for: rebuilt once nobody is on it, still its user's, with the same volume.
    api.post(
        f"pools/{pool}/rollout", {"image": "golden-00001", "include_persistent": True}, status=200
    )
    run_until(engine, lambda: _rollout(api, pool)["on_image"] == 2, what="the free ones")
    for _ in range(5):
        engine.run_once()
    waiting = _rollout(api, pool)
    assert (waiting["waiting_for_users"], waiting["state"]) == (1, "rolling")
    assert _servers(sim)[server]["image_id"] == images[OLD]
    agent.send("logout", user="keeper")
    run_until(engine, lambda: _rollout(api, pool)["state"] == "done", what="done again")
    assert _servers(sim)[server]["image_id"] == images["golden-00001"]
    assert api.get(f"desktops/{kept}")["assigned_user_id"] is not None
    assert volumes() == [volume]


def _driver(api: Api, center_id: str) -> Any:
    from deskbroker.services.inventory import open_center
    from deskbroker.store.tables import Center

    with api.ctx.db.read() as session:
        center = session.get(Center, center_id)
        assert center is not None
        return open_center(api.ctx, center)
