"""An agent's login names a desktop account; the broker user behind it is the desktop's
holder when the names agree, read in the statement that locks the desktop. A login
that waited for that lock while another unit handed the desktop to someone else reads
the holder the row has now: the previous holder's late login is theirs, not the new
holder's (on PostgreSQL the lock's statement, having waited, reads the row again)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from deskbroker.store.tables import Desktop, SessionRow, User
from tests.desktop_agent import Agent, assigned_desktop
from tests.helpers import Api
from tests.races import Seam, while_held


def _user_id(api: Api, name: str) -> str:
    with api.ctx.db.read() as session:
        return session.scalars(select(User.id).where(User.username == name)).one()


def test_a_login_that_waited_for_a_hand_over_is_the_reporting_accounts(api: Api) -> None:
    api.seed_pool(1, users=2)
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    first, second = _user_id(api, "user0"), _user_id(api, "user1")
    seam = Seam()

    def hand_over() -> None:
        # As an administrator's reassignment would: the row locked, its holder changed.
        with api.ctx.db.write() as session:
            row = session.scalars(
                select(Desktop).where(Desktop.id == desktop).with_for_update()
            ).one()
            row.assigned_user_id = second
            session.flush()
            seam.stop()

    answers: list[dict[str, Any]] = []

    def report() -> None:
        answers.append(agent.send("login", user="user0"))

    while_held(seam, hand_over, report, other_ends_first=False, other_waits_s=1)
    [answer] = answers
    assert answer["user_id"] == first
    with api.ctx.db.read() as session:
        [row] = session.scalars(select(SessionRow).where(SessionRow.desktop_id == desktop)).all()
        assert row.user_id == first
