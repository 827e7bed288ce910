"""A login is not queued because the pool's free desktop is locked for a moment by
something other than a claim (an agent's heartbeat or session event writes the row): the
claim waits a moment for it, where skipping it queued the user with the desktop free."""

from __future__ import annotations

import threading
import time

from sqlalchemy import update

from deskbroker.store.tables import Desktop, utcnow
from tests.helpers import Api

HELD_S = 0.05


def test_a_login_takes_a_free_desktop_a_heartbeat_holds_for_a_moment(api: Api) -> None:
    api.seed_pool(1, users=1)
    [desktop] = api.get("desktops")["items"]
    locked = threading.Event()

    def heartbeat() -> None:
        # What an agent's heartbeat does to the row: written, the unit open a moment.
        with api.ctx.db.write() as session:
            session.execute(
                update(Desktop).where(Desktop.id == desktop["id"]).values(agent_seen_at=utcnow())
            )
            locked.set()
            time.sleep(HELD_S)

    beating = threading.Thread(target=heartbeat)
    beating.start()
    assert locked.wait(5)
    answer = api.login("user0")
    beating.join()
    [offer] = answer["offers"]
    assert offer["status"] == "assigned", offer
    assert offer["desktop"]["id"] == desktop["id"]
