"""An authenticator app for tests: real TOTP codes from the secret the broker handed out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyotp


@dataclass
class Authenticator:
    """The user's phone: codes of strictly later time steps, as a real app shows them
    over time (an app never shows one step's code twice, and the broker refuses that)."""

    secret: str
    last: int = -1
    totp: pyotp.TOTP = field(init=False)

    def __post_init__(self) -> None:
        self.totp = pyotp.TOTP(self.secret)

    def code(self) -> str:
        at = time.time()
        now = self.totp.timecode(at)
        # The previous step's code is good only until the current step ends: late in a
        # step it could expire between typing and the broker's check (a loaded CI
        # machine's browser took seconds), so then start from the current step's.
        left_s = self.totp.interval - at % self.totp.interval
        step = max(self.last + 1, now - 1 if left_s > 10 else now)
        while step > self.totp.timecode(time.time()) + 1:
            # Past the broker's window: wait, as the user would, for the next code.
            time.sleep(0.25)
        self.last = step
        return self.totp.generate_otp(step)

    def wrong(self) -> str:
        right = {self.totp.at(time.time(), counter_offset=k) for k in (-1, 0, 1)}
        return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in right)
